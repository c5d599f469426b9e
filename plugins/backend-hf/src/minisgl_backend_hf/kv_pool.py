"""The paged KV pool: one K and one V tensor per model, [layers, kv_heads, slots, head_dim].

The core owns slot indices, this pool owns the memory behind them. Head-major storage makes
a gather by page-table rows come out as [kv_heads, tokens, head_dim], the layout batched
matmuls want, with no transpose copy; writing new tokens is one index_copy_ per layer.
"""

from __future__ import annotations

import logging
import math
import mmap

import torch

from minisgl.cache.kv_budget import GIB, KVShape

logger = logging.getLogger(__name__)


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

    def read(self, slots: torch.Tensor) -> torch.Tensor:
        """Every layer's K and V at `slots` [N], on the pool's device: [N, 2, layers, kv_heads,
        head_dim] (the hierarchical cache copies it to the host)."""
        kv = torch.stack((self.k.index_select(2, slots), self.v.index_select(2, slots)))
        return kv.permute(3, 0, 1, 2, 4).contiguous()

    def store(self, slots: torch.Tensor, data: torch.Tensor) -> None:
        """Write what `read` returned back at `slots` [N]."""
        kv = data.to(self.k.device).permute(1, 2, 3, 0, 4)
        self.k.index_copy_(2, slots, kv[0])
        self.v.index_copy_(2, slots, kv[1])
