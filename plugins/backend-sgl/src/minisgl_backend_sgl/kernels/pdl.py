"""Programmatic dependent launch (compute capability 9.0 and up): a kernel launched with it
may be scheduled while the kernel before it in the stream is still running, so the launch
gap between the small kernels of a decode step overlaps the previous kernel's tail.

Every kernel launched this way calls `wait_previous` before it touches memory: it waits
until the previous kernel has finished and its writes are visible, then lets the next kernel
be scheduled. Each kernel waits for its predecessor, so a write is visible to every later
kernel of the chain, not only the next one.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@triton.jit
def wait_previous(PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@functools.cache
def _supported(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def enabled(device: torch.device) -> bool:
    """Whether kernels on `device` launch with PDL (not in Triton's CPU interpreter)."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return _supported(device.index if device.index is not None else torch.cuda.current_device())


def launch_options(device: torch.device) -> dict:
    """The kernel arguments that switch PDL on or off: the `PDL` constexpr and `launch_pdl`."""
    pdl = enabled(device)
    return {"PDL": pdl, "launch_pdl": True} if pdl else {"PDL": False}
