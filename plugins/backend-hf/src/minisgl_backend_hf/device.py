"""Where the model runs: device and free memory."""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)


def pick_device(requested: str) -> torch.device:
    """`auto` prefers CUDA, then Apple's MPS, then the CPU; an explicit device must exist."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch.cuda.is_available() is False on this machine")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: torch.backends.mps.is_available() is False on this machine")
    if requested not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be auto, cpu, cuda or mps, got {requested!r}")
    return torch.device(requested)


def configure_torch(matmul_precision: str | None) -> None:
    """The fp32 matmul precision (torch's threads are the engine's: minisgl.cpu_threads)."""
    if matmul_precision is not None:
        torch.set_float32_matmul_precision(matmul_precision)


def available_memory_bytes(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes on the device; for the CPU, the host's available RAM."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    if device.type == "mps":
        total = int(torch.mps.recommended_max_memory())
        return max(total - int(torch.mps.driver_allocated_memory()), 0), total
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)
    except ImportError:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_AVPHYS_PAGES"), page * os.sysconf("SC_PHYS_PAGES")
