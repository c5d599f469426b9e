"""The paged KV pool as mlx arrays: per layer one K and one V array [slots + 1, kv_heads, head_dim].

The core owns slot indices, this pool owns the memory behind them. Writing new tokens is
a scatter `pool[slots] = new` that mlx performs in place (the old array has no other
reference, so its buffer is donated), reading a request's context is a gather by its
page-table row. One extra slot at index `capacity` is never handed to the core: padded
positions of a step write their (discarded) K/V there.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass

import mlx.core as mx

logger = logging.getLogger(__name__)

GIB = 1024**3
# The pool lives in host (or unified) memory shared with the OS, the weights, activations
# and the server process: it takes at most this share of what is available.
HOST_POOL_SHARE = 0.25


@dataclass(frozen=True)
class KVShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: mx.Dtype

    @property
    def bytes_per_token(self) -> int:
        """K + V of one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.size


def available_memory_bytes() -> int:
    """Memory the pool may draw on: free RAM on Linux; on macOS (no free-page count), the
    recommended working set of the GPU, else total RAM."""
    if platform.system() == "Darwin":
        info = mx.device_info()
        for key in ("max_recommended_working_set_size", "memory_size"):
            if isinstance(info.get(key), int):
                return int(info[key]) - mx.get_active_memory()
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        return page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return page * os.sysconf("SC_PHYS_PAGES")


def plan_capacity(
    shape: KVShape,
    page_size: int,
    num_pages: int | None,
    memory_ratio: float,
    max_tokens_useful: int,
    max_kv_size: int,
) -> int:
    """Token slots for the pool, a multiple of `page_size`: --num-pages when given, else what
    --memory-ratio of the available memory allows, never more than the scheduler could use;
    MLX_MAX_KV_SIZE (when > 0) is a hard cap over either."""
    if num_pages is not None:
        slots = num_pages * page_size
    else:
        budget = memory_ratio * available_memory_bytes() * HOST_POOL_SHARE
        slots = min(int(budget // shape.bytes_per_token), max_tokens_useful)
    if max_kv_size > 0:
        slots = min(slots, max_kv_size)
    slots -= slots % page_size
    if slots < page_size:
        raise RuntimeError(
            f"KV pool of {slots} token slots is smaller than one page of {page_size} tokens "
            f"(MLX_MAX_KV_SIZE={max_kv_size}, --num-pages={num_pages}, --memory-ratio={memory_ratio}); "
            "raise MLX_MAX_KV_SIZE, --num-pages or --memory-ratio"
        )
    return slots


class KVPool:
    """K and V for every slot of every layer, in the model's dtype."""

    def __init__(self, shape: KVShape, capacity: int) -> None:
        self.shape = shape
        self.capacity = capacity
        self.scratch_slot = capacity  # where padded positions write
        dims = (capacity + 1, shape.num_kv_heads, shape.head_dim)
        # zeros, not garbage: padded gathers read masked slots, and 0 * NaN would be NaN
        self.k = [mx.zeros(dims, dtype=shape.dtype) for _ in range(shape.num_layers)]
        self.v = [mx.zeros(dims, dtype=shape.dtype) for _ in range(shape.num_layers)]
        mx.eval(self.k, self.v)
        logger.info(
            "Allocating mlx KV pool: %d token slots x %d layers x %d kv heads x %d dims (%s), K + V = %.2f GiB",
            capacity,
            shape.num_layers,
            shape.num_kv_heads,
            shape.head_dim,
            str(shape.dtype).removeprefix("mlx.core."),
            self.nbytes / GIB,
        )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    def write(self, layer: int, slots: mx.array, keys: mx.array, values: mx.array) -> None:
        """Store K/V [N, kv_heads, head_dim] of one layer at `slots` [N] (in place)."""
        self.k[layer][slots] = keys
        self.v[layer][slots] = values

    def gather(self, layer: int, slots: mx.array) -> tuple[mx.array, mx.array]:
        """K and V of one layer at `slots` of any shape [...], each [..., kv_heads, head_dim]."""
        return self.k[layer][slots], self.v[layer][slots]
