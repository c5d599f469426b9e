"""Greedy generation through minisgl.LLM on backend mlx equals transformers' generate."""

from __future__ import annotations

import pytest

from minisgl_backend_mlx.probe import INSTALL_HINT as MLX_MISSING

pytest.importorskip("mlx.core", reason=MLX_MISSING)
pytest.importorskip("mlx_lm", reason=MLX_MISSING)

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minisgl import LLM, SamplingParams

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
NEW_TOKENS = 8


def transformers_greedy(path: str, prompt_ids: list[list[int]]) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for ids in prompt_ids:
        generated = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
        out.append(generated[0, len(ids) :].tolist())
    return out


@pytest.mark.slow
def test_greedy_generation_matches_transformers(smollm2_path):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    prompt_ids = [tokenizer(p).input_ids for p in PROMPTS]
    want = transformers_greedy(smollm2_path, prompt_ids)
    with LLM(model=smollm2_path, backend="mlx", dtype="float32", num_pages=1024) as llm:
        assert llm.engine.backend_name == "mlx"
        outs = llm.generate(prompt_ids, SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True))
    assert [o.token_ids for o in outs] == want


def test_tiny_model_serves_through_the_engine(tiny_qwen3_path):
    """The whole engine loop on backend mlx: batching, chunked prefill, stop at max tokens."""
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [20, 21, 22]]
    with LLM(model=tiny_qwen3_path, backend="mlx", dtype="float32", num_pages=256, max_prefill_length=8) as llm:
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True))
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_path, dtype=torch.float32).eval()
    for prompt, out in zip(prompts, outs):
        generated = model.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False, min_new_tokens=5)
        assert out.token_ids == generated[0, len(prompt) :].tolist()


def test_engine_honours_the_mlx_knobs(tiny_qwen3_path):
    """MLX_PREFILL_STEP_SIZE lowers the engine's prefill chunk; AGGRESSIVE_MAX_NEW_TOKENS caps
    each request to its share of the pool (64 slots / 2 running = 32 - 10 prompt tokens)."""
    settings = dict(backend="mlx", dtype="float32", num_pages=64, max_running_requests=2,
                    mlx_prefill_step_size=4, aggressive_max_new_tokens=True)
    with LLM(model=tiny_qwen3_path, **settings) as llm:
        assert llm.engine.scheduler.max_prefill == 4
        out = llm.generate([list(range(5, 15))], SamplingParams(temperature=0, max_new_tokens=50, ignore_eos=True))[0]
        assert len(out.token_ids) == 22 and out.finish_reason == "length"
        llm.engine.check_invariants()
    with LLM(model=tiny_qwen3_path, **(settings | {"aggressive_max_new_tokens": False})) as llm:
        out = llm.generate([list(range(5, 15))], SamplingParams(temperature=0, max_new_tokens=50, ignore_eos=True))[0]
        assert len(out.token_ids) == 50
