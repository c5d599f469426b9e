"""Arrival counts for kernels whose last program to finish a tile does the tile's final step
(the skinny GEMM's split-K sum, decode attention's merge of its key splits).

One int32 buffer of zeros per device; each such program puts its count back to zero, so the
next call and every CUDA graph replay find them zero. Allocated once, at a fixed size, so
graphs captured earlier never hold a buffer that was replaced.
"""

from __future__ import annotations

import torch

SIZE = 1 << 20
_counters: dict[torch.device, torch.Tensor] = {}


def arrival_counters(device: torch.device, needed: int) -> torch.Tensor:
    if needed > SIZE:
        raise ValueError(f"{needed} tiles need arrival counts; the buffer holds {SIZE}")
    counters = _counters.get(device)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("arrival counters are allocated on the first eager call, before any CUDA graph capture")
        counters = _counters[device] = torch.zeros(SIZE, dtype=torch.int32, device=device)
    return counters
