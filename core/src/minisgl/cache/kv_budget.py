"""How many token slots a backend's KV pool gets: one rule for every backend.

Each backend probes its own memory (CUDA, MPS, mlx and a host's RAM are asked differently)
and passes the plain numbers here; the arithmetic, the caps and the error that names the
flag to change live in this one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
# A pool in host RAM shares it with the OS, the server process, tokenizers and activations:
# it takes at most this share of what --memory-ratio allows of the free memory.
HOST_POOL_SHARE = 0.25


@dataclass(frozen=True)
class KVShape:
    """What a KV pool stores per token. `dtype` is the backend's own (torch or mlx) and
    `dtype_size` its bytes per element."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: Any
    dtype_size: int

    @property
    def bytes_per_token(self) -> int:
        """K + V of one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_size


@dataclass(frozen=True)
class KVPoolSize:
    num_pages: int
    page_size: int
    reason: str  # one line for the INFO log: the size and the rule that chose it

    @property
    def slots(self) -> int:
        return self.num_pages * self.page_size


def size_kv_pool(
    shape: KVShape,
    page_size: int,
    *,
    device: str,
    free_bytes: int,
    total_bytes: int,
    host_memory: bool,
    memory_ratio: float,
    num_pages: int | None,
    max_running_requests: int,
    context_len: int,
    reserve_bytes: int = 0,
    slot_cap: tuple[str, int] | None = None,
) -> KVPoolSize:
    """Pages for the pool: --num-pages when given; else what --memory-ratio of the memory
    allows, less `reserve_bytes` that a step needs beyond weights and KV, never more than
    --max-running-requests requests at full context can fill. `slot_cap`, a backend's own
    (flag, token slots) with 0 for off, is a hard cap over either, rounded down to whole pages.

    `host_memory`: the pool lives in RAM shared with the host, and gets HOST_POOL_SHARE of
    --memory-ratio of what is free; else the memory is the device's own, and --memory-ratio
    of its total is for weights + KV, so what is in use now (weights, the CUDA context)
    comes out of it. Raises RuntimeError naming the flag to change when not one page fits."""
    if host_memory:
        budget = memory_ratio * HOST_POOL_SHARE * free_bytes
        source = f"{HOST_POOL_SHARE:g} of --memory-ratio {memory_ratio} of {free_bytes / GIB:.2f} GiB free host memory"
    else:
        budget = memory_ratio * total_bytes - (total_bytes - free_bytes)
        source = (f"--memory-ratio {memory_ratio} of {total_bytes / GIB:.2f} GiB, "
                  f"{(total_bytes - free_bytes) / GIB:.2f} GiB in use")
    hint = "raise --memory-ratio or set --num-pages"
    if reserve_bytes:
        source += f", {reserve_bytes / GIB:.2f} GiB kept for activations"
        hint = "raise --memory-ratio, lower --max-prefill-length, or set --num-pages"
    pages_by_memory = max(int((budget - reserve_bytes) // (shape.bytes_per_token * page_size)), 0)
    # every request holds whole pages of its own
    pages_useful = max_running_requests * -(-context_len // page_size)
    if num_pages is not None:
        pages, why = num_pages, "set by --num-pages"
    elif pages_useful <= pages_by_memory:
        pages, why = pages_useful, (f"all --max-running-requests {max_running_requests} at full context "
                                    f"({context_len} tokens) fill no more ({source} would hold {pages_by_memory} pages)")
    else:
        pages, why = pages_by_memory, f"what {source} holds"
    if slot_cap is not None and slot_cap[1] > 0 and slot_cap[1] // page_size < pages:
        flag, cap = slot_cap
        pages, why, hint = cap // page_size, f"capped by {flag}={cap}", f"raise {flag}"
    if pages < 1:
        raise RuntimeError(f"no room for one KV page of {page_size} tokens on {device} ({why}); {hint}")
    return KVPoolSize(pages, page_size, f"{pages * page_size} token slots ({pages} pages of {page_size}): {why}")
