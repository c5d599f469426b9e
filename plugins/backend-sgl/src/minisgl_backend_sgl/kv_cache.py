"""The KV pool of backend-sgl: K and V for every slot of every layer.

Layout [layers, slots + 1, kv_heads, head_dim]: one layer's K is a contiguous
[slots, kv_heads, head_dim] table that the attention kernels gather rows from. The extra
last slot is scratch: padded rows of a CUDA-graph batch write their K/V there.
"""

from __future__ import annotations

import logging

import torch

from minisgl.cache.kv_budget import GIB, KVShape

logger = logging.getLogger(__name__)


class KVCache:
    def __init__(self, shape: KVShape, num_pages: int, page_size: int, device: torch.device) -> None:
        self.shape = shape
        self.page_size = page_size
        self.num_pages = num_pages
        self.capacity = num_pages * page_size
        self.scratch_slot = self.capacity  # the extra slot after the pool
        dims = (shape.num_layers, self.capacity + 1, shape.num_kv_heads, shape.head_dim)
        self.k = torch.empty(dims, dtype=shape.dtype, device=device)
        self.v = torch.empty(dims, dtype=shape.dtype, device=device)
        logger.info(
            "Allocating %d pages for KV cache, K + V = %.2f GiB (page size %d: %d token slots x %d layers x %d kv heads x %d dims, %s)",
            num_pages, self.nbytes / GIB, page_size, self.capacity, shape.num_layers, shape.num_kv_heads,
            shape.head_dim, str(shape.dtype).removeprefix("torch."),
        )

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]

    def read(self, slots: torch.Tensor) -> torch.Tensor:
        """Every layer's K and V at `slots` [N], on the pool's device: [N, 2, layers, kv_heads,
        head_dim] (the hierarchical cache copies it to the host asynchronously)."""
        kv = torch.stack((self.k.index_select(1, slots), self.v.index_select(1, slots)))
        return kv.transpose(0, 2).contiguous()

    def store(self, slots: torch.Tensor, data: torch.Tensor) -> None:
        """Write what `read` returned back at `slots` [N]."""
        kv = data.to(self.k.device).transpose(0, 2)
        self.k.index_copy_(1, slots, kv[0])
        self.v.index_copy_(1, slots, kv[1])
