"""The native CPU decode attention (csrc/paged_decode.c): built once per machine with the
system's C compiler, cached, and called through ctypes.

It is plain C with OpenMP, no torch headers, so a build takes about a second. The library
is compiled for this CPU (-march=native), so the cache key holds the CPU's model and flags.
Without a compiler (or with HF_CPU_KERNELS=0) attention stays on torch ops, and the log
says which path runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "paged_decode.c"
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c11"]
# Linked in a step of its own, without -ffast-math: gcc before 13 would link crtfastmath.o into
# the library, which turns on flush-to-zero for the whole process (torch and Python included)
# the moment it loads.
LDFLAGS = ["-shared", "-fopenmp", "-lm"]
DTYPES = {torch.float32: "paged_decode_f32", torch.bfloat16: "paged_decode_bf16"}


class _DecodeArgs(ctypes.Structure):
    _fields_ = [
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("table", ctypes.c_void_p),
        ("lens", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("table_stride", ctypes.c_int64),
        ("slots", ctypes.c_int64),
        ("rows", ctypes.c_int),
        ("heads", ctypes.c_int),
        ("kv_heads", ctypes.c_int),
        ("dim", ctypes.c_int),
        ("scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
        ("window", ctypes.c_int),
    ]


def _cpu_identity() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "mini_sglang" / "cpu_kernels"


def _build() -> Path:
    """Compile the library unless a build for this source, compiler flags and CPU is cached."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join([compiler, *CFLAGS, *LDFLAGS]).encode() + _cpu_identity().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"paged_decode-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename: processes starting together never load a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    obj = tmp[:-3] + ".o"
    try:
        for step in ([*CFLAGS, "-c", str(SOURCE), "-o", obj], [obj, *LDFLAGS, "-o", tmp]):
            proc = subprocess.run([compiler, *step], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        for path in (tmp, obj):
            if os.path.exists(path):
                os.unlink(path)
    logger.info("Built the CPU decode-attention kernel: %s", target)
    return target


class PagedDecodeKernel:
    """`kernel(q, k, v, table, lens, out, scale, window, softcap)`: one layer's decode attention."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._fns = {}
        for dtype, name in DTYPES.items():
            fn = getattr(library, name)
            fn.argtypes = [ctypes.POINTER(_DecodeArgs), ctypes.c_int]
            fn.restype = ctypes.c_int
            self._fns[dtype] = fn

    def supports(self, dtype: torch.dtype) -> bool:
        return dtype in self._fns

    def __call__(
        self,
        q: torch.Tensor,  # float32 [B, H, D], contiguous
        k: torch.Tensor,  # [KVH, S, D] of one layer, contiguous
        v: torch.Tensor,
        table: torch.Tensor,  # int64 [B, W], rows contiguous
        lens: torch.Tensor,  # int64 [B]
        out: torch.Tensor,  # float32 [B, H, D]
        scale: float,
        window: int | None,
        softcap: float | None,
    ) -> None:
        rows, heads, dim = q.shape
        args = _DecodeArgs(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), table.data_ptr(), lens.data_ptr(), out.data_ptr(),
            table.stride(0), k.shape[1], rows, heads, k.shape[0], dim,
            scale, softcap or 0.0, window or 0,
        )
        if self._fns[k.dtype](ctypes.byref(args), torch.get_num_threads()) != 0:
            raise ValueError(f"paged decode kernel: {heads} query heads over {k.shape[0]} kv heads of {dim} "
                             "dims do not fit it")


@functools.cache
def paged_decode_kernel() -> PagedDecodeKernel | None:
    """The compiled kernel, or None (logged once with the reason) where it cannot be built."""
    if sys.platform == "win32":
        logger.info("CPU decode attention: torch ops (no native kernel build on Windows)")
        return None
    try:
        kernel = PagedDecodeKernel(ctypes.CDLL(str(_build())))
    except (OSError, RuntimeError) as exc:
        logger.warning("CPU decode attention: torch ops, the native kernel is unavailable: %s", exc)
        return None
    return kernel
