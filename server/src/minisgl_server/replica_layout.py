"""Where each engine replica runs (DP_SIZE, ENABLE_MULTI_DEVICE).

On CUDA with several visible GPUs and ENABLE_MULTI_DEVICE on, DP_SIZE=1 means one replica
per GPU; a larger DP_SIZE spreads its replicas over the GPUs in turn. Each engine process
sees only its GPU (CUDA_VISIBLE_DEVICES), so inside it the device is always cuda:0.
Elsewhere (CPU, MPS, one GPU, or ENABLE_MULTI_DEVICE=0) there are DP_SIZE replicas that
share the one device, which is how several replicas are tested on a CPU machine."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from minisgl.settings import Settings

log = logging.getLogger("minisgl.server")


@dataclass(frozen=True)
class ReplicaPlacement:
    index: int
    device: str  # for people: "cpu", "auto", "cuda (GPU 3)"
    env: dict[str, str] = field(default_factory=dict)  # for the engine process only


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries. torch is
    imported only where an NVIDIA driver exists, so CPU servers stay light."""
    if not Path("/proc/driver/nvidia").exists() and not Path("/dev/nvidia0").exists():
        return []
    try:
        import torch

        count = torch.cuda.device_count()  # NVML-based: creates no CUDA context here
    except Exception as exc:  # a broken driver: run as if there were no GPU
        log.warning("cannot count CUDA devices: %s", exc)
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def plan_replicas(settings: Settings, gpus: list[str] | None = None) -> list[ReplicaPlacement]:
    """One placement per replica to start. `gpus` defaults to `visible_gpus()`."""
    if settings.device in ("auto", "cuda") and settings.enable_multi_device:
        gpus = visible_gpus() if gpus is None else gpus
        if len(gpus) > 1:
            count = len(gpus) if settings.dp_size == 1 else settings.dp_size
            return [
                ReplicaPlacement(i, f"cuda (GPU {gpus[i % len(gpus)]})", {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]})
                for i in range(count)
            ]
    return [ReplicaPlacement(i, settings.device) for i in range(settings.dp_size)]


def describe(placements: list[ReplicaPlacement]) -> str:
    return ", ".join(f"replica {p.index} on {p.device}" for p in placements)
