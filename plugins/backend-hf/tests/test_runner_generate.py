"""Greedy decoding through the runner, batched, reproduces transformers' generate()."""

from __future__ import annotations

import pytest
import torch
from hf_harness import Request, SlotAllocator, make_batch, make_runner
from transformers import AutoModelForCausalLM, AutoTokenizer

STEPS = 24


def generate_with_runner(runner, prompts: list[list[int]], steps: int) -> list[list[int]]:
    """Prefill all prompts in one batch, then decode them together, like the scheduler does."""
    alloc = SlotAllocator(runner.kv_capacity(), seed=7)
    reqs = [Request() for _ in prompts]
    outputs: list[list[int]] = [[] for _ in prompts]
    next_tokens = runner.forward(make_batch(alloc, list(zip(reqs, prompts)))).resolve().next_tokens.tolist()
    for _ in range(steps - 1):
        for out, tok in zip(outputs, next_tokens):
            out.append(tok)
        batch = make_batch(alloc, [(req, [tok]) for req, tok in zip(reqs, next_tokens)])
        next_tokens = runner.forward(batch).resolve().next_tokens.tolist()
    for out, tok in zip(outputs, next_tokens):
        out.append(tok)
    return outputs


def until_eos(tokens: list[int], eos: list[int]) -> list[int]:
    """generate() stops at the first EOS (and pads after it); the runner just keeps going."""
    for i, tok in enumerate(tokens):
        if tok in eos:
            return tokens[: i + 1]
    return tokens


@pytest.mark.slow
def test_greedy_generation_matches_transformers_generate(smollm2_path):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    questions = ["What is the capital of France?", "Write a haiku about the sea, please, in English."]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        for q in questions
    ]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    assert len(prompts[0]) != len(prompts[1])  # rows of different lengths share the decode batch

    runner = make_runner(smollm2_path, dtype="float32")
    got = generate_with_runner(runner, prompts, STEPS)

    ref = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    for prompt, tokens in zip(prompts, got):
        with torch.inference_mode():
            out = ref.generate(torch.tensor([prompt]), max_new_tokens=STEPS, do_sample=False)
        expected = until_eos(out[0, len(prompt) :].tolist(), runner.eos_token_ids)
        assert len(expected) >= 8
        assert until_eos(tokens, runner.eos_token_ids) == expected, tokenizer.decode(tokens)
