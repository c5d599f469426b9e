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

import mlx.core as mx

from minisgl.cache.kv_budget import GIB, KVShape

logger = logging.getLogger(__name__)


def available_memory_bytes() -> tuple[int, int]:
    """(free, total) bytes the pool may draw on: RAM on Linux; on macOS (no free-page
    count), the recommended working set of the GPU (else all RAM) less mlx's active memory."""
    if platform.system() == "Darwin":
        info = mx.device_info()
        for key in ("max_recommended_working_set_size", "memory_size"):
            if isinstance(info.get(key), int):
                return int(info[key]) - mx.get_active_memory(), int(info[key])
    page = os.sysconf("SC_PAGE_SIZE")
    total = page * os.sysconf("SC_PHYS_PAGES")
    try:
        return page * os.sysconf("SC_AVPHYS_PAGES"), total
    except (ValueError, OSError):
        return total, total


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
