"""What the runner reports about itself, and how it sizes its KV pool."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hf_harness import Request, SlotAllocator, make_batch, make_runner
from transformers import AutoConfig

from minisgl.engine.batch import ModelRunner
from minisgl.settings import Settings
from minisgl.testing import make_tiny_model
from minisgl_backend_hf.runner import DUMMY_WEIGHT_SEED, create_runner


def test_runner_attributes(tiny_qwen3_path):
    runner = make_runner(tiny_qwen3_path, num_pages=64, page_size=4)
    config = AutoConfig.from_pretrained(tiny_qwen3_path)
    assert isinstance(runner, ModelRunner)
    assert runner.kv_capacity() == 256
    assert runner.vocab_size == config.vocab_size
    assert runner.max_context_len == config.max_position_embeddings
    assert runner.eos_token_ids == [config.eos_token_id]
    assert runner.device == torch.device("cpu")
    assert runner.dtype == torch.float32
    assert runner.pool.k.shape == (config.num_hidden_layers, config.num_key_value_heads, 256, config.head_dim)


def test_max_seq_len_override_and_pool_sized_from_memory(tiny_llama_path):
    # no --num-pages: sized from free memory, but never beyond what the scheduler can use
    runner = make_runner(tiny_llama_path, num_pages=None, page_size=8, max_running_requests=3, max_seq_len_override=100)
    assert runner.max_context_len == 100
    assert runner.kv_capacity() == 312  # 3 requests of 100 tokens, each in 13 whole pages of 8


def test_intermediate_chunk_samples_nothing(tiny_qwen3_path):
    runner = make_runner(tiny_qwen3_path)
    alloc = SlotAllocator(runner.kv_capacity())
    result = runner.forward(make_batch(alloc, [(Request(), [5, 6, 7, 8])], sample=[False]))
    assert result.next_tokens.shape == (0,)


def test_greedy_forward_returns_the_argmax(tiny_llama_path):
    runner = make_runner(tiny_llama_path)
    alloc = SlotAllocator(runner.kv_capacity())
    logits = runner.compute_logits(make_batch(alloc, [(Request(), [5, 6, 7]), (Request(), [9, 10])]))
    alloc = SlotAllocator(runner.kv_capacity())
    result = runner.forward(make_batch(alloc, [(Request(), [5, 6, 7]), (Request(), [9, 10])])).resolve()
    assert result.next_tokens.tolist() == logits.argmax(-1).tolist()


def test_dummy_weights_are_deterministic(tmp_path):
    # a checkpoint drawn with another seed than the dummy weights, so "not the checkpoint's
    # weights" cannot hold by coincidence
    checkpoint = make_tiny_model(tmp_path, arch="qwen3", seed=DUMMY_WEIGHT_SEED + 1)

    def dummy_runner():
        settings = Settings(device="cpu", num_pages=64, dtype="float32")
        return create_runner(settings, SimpleNamespace(path=checkpoint, dummy=True, name="tiny-dummy"))

    first, second = dummy_runner(), dummy_runner()
    batches = [make_batch(SlotAllocator(64), [(Request(), [3, 4, 5, 6])]) for _ in range(2)]
    a, b = first.compute_logits(batches[0]), second.compute_logits(batches[1])
    assert torch.equal(a, b)
    real = make_runner(checkpoint, num_pages=64).compute_logits(make_batch(SlotAllocator(64), [(Request(), [3, 4, 5, 6])]))
    assert not torch.allclose(a, real)  # random, not the checkpoint's weights


def test_unknown_device_is_a_clear_error(tiny_qwen3_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="--device cuda"):
        make_runner(tiny_qwen3_path, device="cuda")


def test_a_cpu_pool_costs_memory_only_where_it_is_written():
    """The pool is an anonymous memory map on a CPU: zeros to read, no resident memory
    until written (torch.zeros would write all of it at start: seconds per GiB)."""
    import os

    import torch

    from minisgl.cache.kv_budget import KVShape
    from minisgl_backend_hf.kv_pool import KVPool

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = resident()
    pool = KVPool(KVShape(num_layers=16, num_kv_heads=4, head_dim=64, dtype=torch.float32, dtype_size=4), num_pages=65536,
                  page_size=8, device=torch.device("cpu"))
    assert pool.nbytes == 2 * 16 * 4 * 65536 * 8 * 64 * 4  # 2 GiB
    assert resident() - before < 64 << 20
    slots = torch.tensor([3, 500_000])
    k, v = pool.gather(5, slots)
    assert not k.any() and not v.any()
    pool.write(5, slots, torch.ones(4, 2, 64), torch.full((4, 2, 64), 2.0))
    k, v = pool.gather(5, slots)
    assert (k == 1).all() and (v == 2).all()
