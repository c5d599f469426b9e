"""backend-sgl's decoder (torch reference kernels, on the CPU) against transformers on the
same tiny random checkpoint: prefill, chunked prefill over a cached prefix, batched decode."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from batches import SlotPlanner, make_batch
from harness import ModelHarness

from minisgl.testing import make_tiny_model

TOL = dict(atol=2e-4, rtol=2e-4)


@pytest.fixture(scope="module", params=["qwen3", "llama", "qwen3_moe"])
def tiny(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param, seed=3)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, hf


@pytest.fixture(params=["reference", "triton"])
def backend(request) -> dict:
    """Which kernels run the model: the torch references on the CPU, or the Triton kernels
    (on CUDA, or in Triton's interpreter on the CPU with TRITON_INTERPRET=1)."""
    if request.param == "reference":
        return {}
    if importlib.util.find_spec("triton") is None:
        pytest.skip("needs Triton")
    from minisgl_backend_sgl.kernels.select import triton_kernels

    if torch.cuda.is_available():
        return {"kernels": triton_kernels(), "device": "cuda"}
    if os.environ.get("TRITON_INTERPRET") == "1":
        return {"kernels": triton_kernels(), "device": "cpu"}
    pytest.skip("Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1 for Triton's interpreter")


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


def test_prefill_matches(tiny, backend):
    path, hf = tiny
    h = ModelHarness(path, **backend)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, h.config.vocab_size, (n,), generator=gen).tolist() for n in (7, 1, 19)]
    batch = make_batch(SlotPlanner(h.kv.capacity), list(enumerate(prompts)), sample_all_rows=True)
    ours = h.logits(batch)
    ref = torch.cat([hf_logits(hf, p) for p in prompts])
    torch.testing.assert_close(ours.cpu(), ref, **TOL)


def test_chunked_prefill_then_batched_decode(tiny, backend):
    path, hf = tiny
    h = ModelHarness(path, **backend)
    gen = torch.Generator().manual_seed(1)
    prompts = {rid: torch.randint(0, h.config.vocab_size, (n,), generator=gen).tolist() for rid, n in enumerate((23, 5, 12))}
    planner = SlotPlanner(h.kv.capacity, seed=1)
    # chunk 1: request 0's first 10 tokens alone; chunk 2: its remaining 13 with the others' whole prompts
    h.logits(make_batch(planner, [(0, prompts[0][:10])]))
    chunk2 = make_batch(planner, [(0, prompts[0][10:]), (1, prompts[1]), (2, prompts[2])], sample_all_rows=True)
    ours = h.logits(chunk2)
    ref = torch.cat([hf_logits(hf, prompts[0])[10:], hf_logits(hf, prompts[1]), hf_logits(hf, prompts[2])])
    torch.testing.assert_close(ours.cpu(), ref, **TOL)

    seqs = {rid: list(p) for rid, p in prompts.items()}
    for _ in range(4):  # greedy decode of all three in one batch, lengths differ
        last = {rid: int(hf_logits(hf, s)[-1].argmax()) for rid, s in seqs.items()}
        batch = make_batch(planner, [(rid, [tok]) for rid, tok in last.items()])
        assert batch.is_decode
        for rid, tok in last.items():
            seqs[rid].append(tok)
        ours = h.logits(batch)
        ref = torch.stack([hf_logits(hf, seqs[rid])[-1] for rid in seqs])
        torch.testing.assert_close(ours.cpu(), ref, **TOL)
