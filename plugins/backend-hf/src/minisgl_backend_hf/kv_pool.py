"""The paged KV pool: one K and one V tensor per model, [layers, kv_heads, slots, head_dim].

The core owns slot indices, this pool owns the memory behind them. Head-major storage makes
a gather by page-table rows come out as [kv_heads, tokens, head_dim], the layout batched
matmuls want, with no transpose copy; writing new tokens is one index_copy_ per layer.
"""

from __future__ import annotations

import logging
import math
import mmap
from dataclasses import dataclass

import torch

from .device import available_memory_bytes

logger = logging.getLogger(__name__)

GIB = 1024**3
# On a CPU the "device memory" is the host's RAM, shared with the OS, the server process,
# tokenizers and activations: the pool takes at most this share of what is available.
CPU_POOL_SHARE = 0.25


@dataclass(frozen=True)
class KVShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        """K + V of one token over all layers."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize


def plan_num_pages(
    shape: KVShape,
    device: torch.device,
    page_size: int,
    num_pages: int | None,
    memory_ratio: float,
    max_tokens_useful: int,
) -> int:
    """How many pages the pool gets: --num-pages when given, else what --memory-ratio of the
    device leaves after the (already loaded) weights, never more than the scheduler could use."""
    if num_pages is not None:
        return num_pages
    free, total = available_memory_bytes(device)
    if device.type == "cpu":
        budget = memory_ratio * free * CPU_POOL_SHARE
    else:
        # --memory-ratio is the share of the whole device for weights + KV; what is in use
        # now (weights, the CUDA context) comes out of it.
        budget = memory_ratio * total - (total - free)
    pages_by_memory = int(budget // (shape.bytes_per_token * page_size))
    pages_useful = -(-max_tokens_useful // page_size)
    pages = min(pages_by_memory, pages_useful)
    if pages < 1:
        raise RuntimeError(
            f"no memory left for the KV cache on {device} (free {free / GIB:.2f} GiB of "
            f"{total / GIB:.2f} GiB with --memory-ratio {memory_ratio}); raise --memory-ratio or set --num-pages"
        )
    return pages


def _zeros(dims: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor. On a CPU it is an anonymous memory map: the OS hands out zero pages as
    they are first written, so a pool of gigabytes costs nothing until it is used, where
    torch.zeros would write every byte at start (seconds per GiB)."""
    if device.type != "cpu":
        return torch.zeros(dims, dtype=dtype, device=device)
    nbytes = math.prod(dims) * torch.empty((), dtype=dtype).element_size()
    # frombuffer keeps the map alive as long as the tensor
    return torch.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype=dtype, count=math.prod(dims)).view(dims)


class KVPool:
    """K and V for every slot of every layer, on the model's device and in its dtype."""

    def __init__(self, shape: KVShape, num_pages: int, page_size: int, device: torch.device) -> None:
        self.shape = shape
        self.page_size = page_size
        self.num_pages = num_pages
        self.capacity = num_pages * page_size
        dims = (shape.num_layers, shape.num_kv_heads, self.capacity, shape.head_dim)
        # zeros, not empty: padded gathers read masked slots, and 0 * NaN garbage would be NaN
        self.k = _zeros(dims, shape.dtype, device)
        self.v = _zeros(dims, shape.dtype, device)
        logger.info(
            "Allocating %d pages for KV cache, K + V = %.2f GiB (%d slots x %d layers x %d kv heads x %d dims, %s)",
            num_pages,
            self.nbytes / GIB,
            self.capacity,
            shape.num_layers,
            shape.num_kv_heads,
            shape.head_dim,
            str(shape.dtype).removeprefix("torch."),
        )

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def write(self, layer: int, slots: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store the new tokens' K/V ([kv_heads, T, head_dim]) of one layer at `slots` [T]."""
        self.k[layer].index_copy_(1, slots, key)
        self.v[layer].index_copy_(1, slots, value)

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of one layer at `slots` [N], each [kv_heads, N, head_dim]."""
        return self.k[layer].index_select(1, slots), self.v[layer].index_select(1, slots)
