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
import logging
import os

import torch
import triton
import triton.language as tl

logger = logging.getLogger(__name__)


@triton.jit
def wait_previous(PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _increment(x_ptr, PDL: tl.constexpr):
    wait_previous(PDL)
    tl.store(x_ptr, tl.load(x_ptr) + 1)


@functools.cache
def _supported(index: int) -> bool:
    """Hopper or later, and a Triton that launches with PDL: two dependent launches checked
    once, so a Triton or driver without it costs the gain, not the kernels."""
    if torch.cuda.get_device_capability(index)[0] < 9:
        return False
    try:
        x = torch.zeros(1, dtype=torch.int32, device=torch.device("cuda", index))
        for _ in range(2):
            _increment[(1,)](x, PDL=True, launch_pdl=True)
        ok = int(x.item()) == 2
    except Exception as exc:  # an older Triton (no launch_pdl, no gdc_wait) or driver
        logger.info("programmatic dependent launch unavailable (%s: %s); kernels launch plainly",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False
    if ok:
        logger.info("Triton kernels launch with programmatic dependent launch (compute capability 9.0+)")
    else:
        logger.warning("programmatic dependent launch gave a wrong result in its check; kernels launch plainly")
    return ok


def enabled(device: torch.device) -> bool:
    """Whether kernels on `device` launch with PDL (not in Triton's CPU interpreter)."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return _supported(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def launch_options(device: torch.device) -> dict:
    """The kernel arguments that switch PDL on or off: the `PDL` constexpr and `launch_pdl`
    (once per device: every kernel launch asks)."""
    pdl = enabled(device)
    return {"PDL": pdl, "launch_pdl": True} if pdl else {"PDL": False}
