"""The mlx runner over the paged pool computes the same logits as transformers' forward."""

from __future__ import annotations

import pytest

from minisgl_backend_mlx.probe import INSTALL_HINT as MLX_MISSING

pytest.importorskip("mlx.core", reason=MLX_MISSING)
pytest.importorskip("mlx_lm", reason=MLX_MISSING)

import torch
from mlx_harness import Request, SlotAllocator, make_batch, make_runner, random_tokens
from transformers import AutoModelForCausalLM

FP32_ATOL = 2e-4


def reference_logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0].float()


@pytest.fixture(scope="module", params=["tiny_qwen3_path", "tiny_llama_path"])
def tiny(request):
    path = request.getfixturevalue(request.param)
    # a prefill step of 16 tokens makes long prompts run as several chained model calls
    runner = make_runner(path, mlx_prefill_step_size=16)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return runner, ref


def test_prefill_matches_transformers(tiny):
    runner, ref = tiny
    tokens = random_tokens(13, runner.vocab_size, seed=1)
    alloc = SlotAllocator(runner.kv_capacity())
    got = runner.compute_logits(make_batch(alloc, [(Request(), tokens)], every_row=True))
    torch.testing.assert_close(got, reference_logits(ref, tokens), atol=FP32_ATOL, rtol=0)


def test_prefill_longer_than_the_step_size_runs_in_pieces(tiny):
    runner, ref = tiny
    assert runner.max_prefill_tokens == 16
    tokens = random_tokens(53, runner.vocab_size, seed=2)  # pieces of 16, 16, 16, 5
    alloc = SlotAllocator(runner.kv_capacity(), seed=1)
    got = runner.compute_logits(make_batch(alloc, [(Request(), tokens)], every_row=True))
    torch.testing.assert_close(got, reference_logits(ref, tokens), atol=FP32_ATOL, rtol=0)


def test_chunked_prefill_across_steps(tiny):
    runner, ref = tiny
    tokens = random_tokens(30, runner.vocab_size, seed=3)
    alloc = SlotAllocator(runner.kv_capacity(), seed=2)
    req = Request()
    first = make_batch(alloc, [(req, tokens[:11])], sample=[False])
    assert first.sampling is None
    assert runner.compute_logits(first) is None
    assert runner.forward(make_batch(alloc, [(Request(), tokens[:4])], sample=[False])).next_tokens.numel() == 0
    got = runner.compute_logits(make_batch(alloc, [(req, tokens[11:])], every_row=True))
    torch.testing.assert_close(got, reference_logits(ref, tokens)[11:], atol=FP32_ATOL, rtol=0)


def test_batched_decode_matches_separate_forwards(tiny):
    runner, ref = tiny
    alloc = SlotAllocator(runner.kv_capacity(), seed=4)
    prompts = [random_tokens(n, runner.vocab_size, seed=10 + n) for n in (5, 12, 21)]
    reqs = [Request() for _ in prompts]
    first = runner.compute_logits(make_batch(alloc, list(zip(reqs, prompts))))  # three prefills in one step
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(first[row], reference_logits(ref, prompt)[-1], atol=FP32_ATOL, rtol=0)
    for step in range(3):
        new = [[t] for t in random_tokens(len(reqs), runner.vocab_size, seed=100 + step)]
        got = runner.compute_logits(make_batch(alloc, list(zip(reqs, new))))
        for row, (prompt, tok) in enumerate(zip(prompts, new)):
            prompt.extend(tok)
            torch.testing.assert_close(got[row], reference_logits(ref, prompt)[-1], atol=FP32_ATOL, rtol=0)


def test_mixed_step_of_decodes_a_new_prompt_and_a_continued_chunk(tiny):
    runner, ref = tiny
    alloc = SlotAllocator(runner.kv_capacity(), seed=5)
    decoding, chunked, fresh = Request(), Request(), Request()
    d_tokens = random_tokens(9, runner.vocab_size, seed=20)
    c_tokens = random_tokens(40, runner.vocab_size, seed=21)
    f_tokens = random_tokens(7, runner.vocab_size, seed=22)
    runner.compute_logits(make_batch(alloc, [(decoding, d_tokens[:8]), (chunked, c_tokens[:18])], sample=[True, False]))
    # one step: a decode, the rest of a chunked prompt (longer than a call), a whole new prompt
    got = runner.compute_logits(
        make_batch(alloc, [(decoding, d_tokens[8:]), (chunked, c_tokens[18:]), (fresh, f_tokens)])
    )
    for row, tokens in enumerate((d_tokens, c_tokens, f_tokens)):
        torch.testing.assert_close(got[row], reference_logits(ref, tokens)[-1], atol=FP32_ATOL, rtol=0)


def test_shared_prefix_slots_are_read_not_rewritten(tiny):
    """Prefix-cache hit: a second request's page-table row starts with the first one's slots."""
    runner, ref = tiny
    alloc = SlotAllocator(runner.kv_capacity(), seed=6)
    prefix = random_tokens(10, runner.vocab_size, seed=30)
    owner = Request()
    runner.compute_logits(make_batch(alloc, [(owner, prefix)]))
    sharer = Request(slots=list(owner.slots))
    tail = random_tokens(6, runner.vocab_size, seed=31)
    got = runner.compute_logits(make_batch(alloc, [(sharer, tail)], every_row=True))
    torch.testing.assert_close(got, reference_logits(ref, prefix + tail)[10:], atol=FP32_ATOL, rtol=0)


def test_forward_samples_the_greedy_token(tiny):
    runner, ref = tiny
    alloc = SlotAllocator(runner.kv_capacity(), seed=7)
    prompts = [random_tokens(n, runner.vocab_size, seed=40 + n) for n in (6, 9)]
    result = runner.forward(make_batch(alloc, [(Request(), p) for p in prompts]))
    assert result.next_tokens.dtype == torch.int64
    want = [int(reference_logits(ref, p)[-1].argmax()) for p in prompts]
    assert result.next_tokens.tolist() == want
