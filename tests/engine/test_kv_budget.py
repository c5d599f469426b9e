"""The one KV-pool sizing rule every backend calls: memory, overrides, caps and errors."""

from __future__ import annotations

import pytest
import torch

from minisgl.cache.kv_budget import GIB, HOST_POOL_SHARE, KVShape, size_kv_pool

SHAPE = KVShape(num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.bfloat16, dtype_size=2)  # 64 bytes a token


def size(page_size=1, *, free=10**9, total=10**9, host=False, ratio=0.9, reserve=0, num_pages=None,
         running=1000, context=1000, cap=None):
    return size_kv_pool(SHAPE, page_size, device="cuda:0", free_bytes=free, total_bytes=total, host_memory=host,
                        memory_ratio=ratio, num_pages=num_pages, max_running_requests=running, context_len=context,
                        reserve_bytes=reserve, slot_cap=cap)


def test_bytes_per_token():
    assert SHAPE.bytes_per_token == 2 * 2 * 2 * 4 * 2


def test_device_memory_is_the_ratio_of_the_total_less_what_is_in_use_and_the_reserve():
    # 0.5 * 1000 - (1000 - 900) - 100 = 300 bytes -> 300 // (64 * 2) = 2 pages of 2 tokens
    result = size(2, free=900, total=1000, ratio=0.5, reserve=100)
    assert (result.num_pages, result.slots) == (2, 4)
    assert "--memory-ratio 0.5" in result.reason and "kept for activations" in result.reason


def test_host_memory_takes_a_share_of_the_ratio_of_what_is_free():
    free = 64 * 10_000
    result = size(free=free, total=10 * free, host=True, ratio=0.8)
    assert result.slots == int(0.8 * HOST_POOL_SHARE * free) // 64
    assert "free host memory" in result.reason


def test_num_pages_overrides_memory():
    result = size(2, free=900, total=1000, ratio=0.5, num_pages=7)
    assert result.num_pages == 7 and "--num-pages" in result.reason


def test_never_more_than_the_running_requests_at_full_context_can_fill():
    assert size(running=1, context=5).slots == 5
    # each request holds whole pages: 3 requests of 100 tokens in pages of 8 take 3 * 13 pages
    result = size(8, running=3, context=100)
    assert result.num_pages == 39 and "--max-running-requests 3" in result.reason


def test_too_little_memory_names_the_flags():
    with pytest.raises(RuntimeError, match="--memory-ratio"):
        size(free=100, total=1000, ratio=0.5)
    with pytest.raises(RuntimeError, match="--max-prefill-length"):
        size(free=GIB, total=GIB, ratio=1.0, reserve=GIB)


def test_a_backend_cap_rounds_down_to_whole_pages_and_0_is_off():
    result = size(4, num_pages=64, cap=("MLX_MAX_KV_SIZE", 50))
    assert result.slots == 48 and "MLX_MAX_KV_SIZE=50" in result.reason
    assert size(running=4, context=4096, cap=("MLX_MAX_KV_SIZE", 300)).slots == 300
    assert size(4, num_pages=64, cap=("MLX_MAX_KV_SIZE", 0)).slots == 256
    assert size(4, num_pages=2, cap=("MLX_MAX_KV_SIZE", 50)).slots == 8


def test_a_cap_below_one_page_names_its_flag():
    with pytest.raises(RuntimeError, match="raise MLX_MAX_KV_SIZE"):
        size(16, num_pages=8, cap=("MLX_MAX_KV_SIZE", 10))
