"""backend-sgl's model code on the CPU (the torch reference kernels behind its kernel
interface): minisgl.LLM gives transformers' greedy tokens through backend-hf's, on the real
smollm2-135m, so CI runs the fast path's model, weight loading, KV pool and runner."""

from __future__ import annotations

import pytest

from minisgl import LLM, SamplingParams

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.mark.slow
def test_sgl_on_cpu_gives_backend_hfs_greedy_tokens(smollm2_path):
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    with LLM(smollm2_path, backend="sgl", device="cpu", dtype="float32", num_pages=2048) as llm:
        assert llm.engine.backend_name == "sgl"
        sgl = [o.token_ids for o in llm.generate(PROMPTS, params)]
    with LLM(smollm2_path, backend="hf", dtype="float32") as llm:
        hf = [o.token_ids for o in llm.generate(PROMPTS, params)]
    assert sgl == hf
