"""The KV pool of backend-sgl: K and V for every slot of every layer, sized from --memory-ratio.

Layout [layers, slots + 1, kv_heads, head_dim]: one layer's K is a contiguous
[slots, kv_heads, head_dim] table that the attention kernels gather rows from. The extra
last slot is scratch: padded rows of a CUDA-graph batch write their K/V there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

GIB = 1024**3


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        """K + V of one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()


def plan_num_pages(layout: KVLayout, page_size: int, *, free_bytes: int, total_bytes: int, memory_ratio: float,
                   reserve_bytes: int, num_pages: int | None = None, max_useful_tokens: int | None = None) -> int:
    """Pages for the pool: --num-pages when given; else --memory-ratio of the whole device,
    minus what is in use now (weights, CUDA context) and a reserve for activations and CUDA
    graphs; never more than the scheduler could ever fill."""
    if num_pages is not None:
        return num_pages
    budget = memory_ratio * total_bytes - (total_bytes - free_bytes) - reserve_bytes
    pages = int(budget // (layout.bytes_per_token * page_size))
    if max_useful_tokens is not None:
        pages = min(pages, -(-max_useful_tokens // page_size))
    if pages < 1:
        raise RuntimeError(
            f"no device memory left for the KV cache: {free_bytes / GIB:.2f} GiB free of {total_bytes / GIB:.2f} GiB, "
            f"--memory-ratio {memory_ratio}, {reserve_bytes / GIB:.2f} GiB kept for activations; "
            "raise --memory-ratio, lower --max-prefill-length, or set --num-pages"
        )
    return pages


class KVCache:
    def __init__(self, layout: KVLayout, num_pages: int, page_size: int, device: torch.device) -> None:
        self.layout = layout
        self.page_size = page_size
        self.num_pages = num_pages
        self.capacity = num_pages * page_size
        self.scratch_slot = self.capacity  # the extra slot after the pool
        shape = (layout.num_layers, self.capacity + 1, layout.num_kv_heads, layout.head_dim)
        self.k = torch.empty(shape, dtype=layout.dtype, device=device)
        self.v = torch.empty(shape, dtype=layout.dtype, device=device)
        logger.info(
            "Allocating %d pages for KV cache, K + V = %.2f GiB (page size %d: %d token slots x %d layers x %d kv heads x %d dims, %s)",
            num_pages, self.nbytes / GIB, page_size, self.capacity, layout.num_layers, layout.num_kv_heads,
            layout.head_dim, str(layout.dtype).removeprefix("torch."),
        )

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]
