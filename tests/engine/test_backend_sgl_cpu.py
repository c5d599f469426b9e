"""backend-sgl's model code on the CPU (the torch reference kernels behind its kernel
interface): minisgl.LLM gives transformers' greedy tokens through backend-hf's, on the real
smollm2-135m and on a tiny random Qwen3-MoE, so CI runs the fast path's model, weight
loading, KV pool and runner."""

from __future__ import annotations

import subprocess
import sys

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


def test_a_tiny_qwen3_moe_answers_the_same_on_hf_and_sgl(tmp_path):
    from minisgl.testing import make_tiny_model

    path = make_tiny_model(tmp_path, arch="qwen3_moe", num_layers=3, seed=2)
    answers = {}
    for backend in ("hf", "sgl"):
        out = subprocess.run([sys.executable, "-m", "minisgl", "generate", "--backend", backend, "--device", "cpu",
                              "--dtype", "float32", "--num-pages", "512", "--model-path", path, "--max-new-tokens", "16",
                              "Hello there, how are"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        answers[backend] = out.stdout
    assert answers["hf"] == answers["sgl"] and answers["hf"].strip()



def test_the_fused_moe_backend_needs_cuda(tmp_path):
    from minisgl.testing import make_tiny_model

    path = make_tiny_model(tmp_path, arch="qwen3_moe", num_layers=2)
    with pytest.raises(ValueError, match="--moe-backend fused runs the Triton MoE kernel on CUDA"):
        LLM(path, backend="sgl", device="cpu", moe_backend="fused", num_pages=64)


@pytest.mark.parametrize("backend", ["hf", "sgl"])
def test_logit_bias_forces_and_bans_tokens_on_each_backend(tiny_qwen3_path, backend):
    prompt = [11, 12, 13, 14, 15]
    greedy = SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
    with LLM(tiny_qwen3_path, backend=backend, device="cpu", dtype="float32", num_pages=256) as llm:
        (plain,) = llm.generate(prompt, greedy)
        first = plain.token_ids[0]
        forced, banned, same = llm.generate([prompt] * 3, [
            SamplingParams(max_new_tokens=4, temperature=1.0, seed=3, ignore_eos=True, logit_bias={7: 100.0}),
            SamplingParams(max_new_tokens=1, temperature=0.0, logit_bias={first: -100.0}),
            greedy,  # in the same batch: the other rows' biases leave it alone
        ])
    assert forced.token_ids == [7] * 4
    assert banned.token_ids[0] != first
    assert same.token_ids == plain.token_ids
