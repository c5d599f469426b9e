"""The native CPU kernels (csrc/*.c: decode attention over the paged pool, and the decoder's
small per-layer ops): built once per machine with the system's C compiler into one library,
cached, and called through ctypes.

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

SOURCES = sorted((Path(__file__).with_name("csrc")).glob("*.c"))
HEADERS = sorted((Path(__file__).with_name("csrc")).glob("*.h"))
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
        ("table_rows", ctypes.c_void_p),
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
        b"".join(src.read_bytes() for src in SOURCES + HEADERS) + " ".join([compiler, *CFLAGS, *LDFLAGS]).encode() + _cpu_identity().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"minisgl_cpu-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename: processes starting together never load a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    objs = [f"{tmp[:-3]}-{src.stem}.o" for src in SOURCES]
    steps = [[*CFLAGS, "-c", str(src), "-o", obj] for src, obj in zip(SOURCES, objs)] + [[*objs, *LDFLAGS, "-o", tmp]]
    try:
        for step in steps:
            proc = subprocess.run([compiler, *step], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        for path in (tmp, *objs):
            if os.path.exists(path):
                os.unlink(path)
    logger.info("Built the CPU kernels: %s", target)
    return target


class PagedDecodeKernel:
    """`kernel(q, k, v, table, table_rows, lens, out, scale, window, softcap)`: one layer's
    decode attention; row b reads table row table_rows[b] (row b where table_rows is None)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._fns = {}
        for dtype, name in DTYPES.items():
            fn = getattr(library, name)
            fn.argtypes = [ctypes.POINTER(_DecodeArgs), ctypes.c_int]
            fn.restype = ctypes.c_int
            self._fns[dtype] = fn
        self._vector_fits = library.paged_decode_vector_fits
        self._vector_fits.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._vector_fits.restype = ctypes.c_int

    def supports(self, dtype: torch.dtype) -> bool:
        return dtype in self._fns

    def vector_path(self, heads: int, kv_heads: int, dim: int) -> bool:
        """Whether the vector path (AVX-512 or AVX2) serves this shape: with it the kernel also
        beats torch on prefill chunks (attention_plan.py)."""
        return bool(self._vector_fits(heads, kv_heads, dim))

    def __call__(
        self,
        q: torch.Tensor,  # float32 [B, H, D], contiguous
        k: torch.Tensor,  # [KVH, S, D] of one layer, contiguous
        v: torch.Tensor,
        table: torch.Tensor,  # int64 [R, W], rows contiguous
        table_rows: torch.Tensor | None,  # int64 [B]
        lens: torch.Tensor,  # int64 [B]
        out: torch.Tensor,  # float32 [B, H, D]
        scale: float,
        window: int | None,
        softcap: float | None,
    ) -> None:
        rows, heads, dim = q.shape
        args = _DecodeArgs(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), table.data_ptr(),
            None if table_rows is None else table_rows.data_ptr(), lens.data_ptr(), out.data_ptr(),
            table.stride(0), k.shape[1], rows, heads, k.shape[0], dim,
            scale, softcap or 0.0, window or 0,
        )
        if self._fns[k.dtype](ctypes.byref(args), torch.get_num_threads()) != 0:
            raise ValueError(f"paged decode kernel: {heads} query heads over {k.shape[0]} kv heads of {dim} "
                             "dims do not fit it")


class _RopeStoreArgs(ctypes.Structure):
    _fields_ = [
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("cos", ctypes.c_void_p),
        ("sin", ctypes.c_void_p),
        ("slots", ctypes.c_void_p),
        ("k_pool", ctypes.c_void_p),
        ("v_pool", ctypes.c_void_p),
        ("tokens", ctypes.c_int64),
        ("q_stride", ctypes.c_int64),
        ("k_stride", ctypes.c_int64),
        ("v_stride", ctypes.c_int64),
        ("pool_slots", ctypes.c_int64),
        ("heads", ctypes.c_int),
        ("kv_heads", ctypes.c_int),
        ("dim", ctypes.c_int),
    ]


class _GemvArgs(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_void_p),
        ("w", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("other", ctypes.c_void_p),
        ("y", ctypes.c_void_p),
        ("rows", ctypes.c_int64),
        ("in_features", ctypes.c_int64),
        ("out_features", ctypes.c_int64),
        ("x_stride", ctypes.c_int64),
        ("other_stride", ctypes.c_int64),
        ("y_stride", ctypes.c_int64),
        ("epilogue", ctypes.c_int),
    ]


_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}
GEMV_ROWS = 4  # csrc/gemv.c's row counts (float32)
# rows up to which the few-row kernels beat oneDNN's packed GEMM (BENCHMARKS.md)
GEMV_ROWS_FASTER = {torch.float32: 2, torch.bfloat16: 32}
GEMV_BLOCK, GEMV_CHUNK = 4, 16  # csrc/gemv.c's BLOCK and CHUNK_F32
ROWS_TILE = 32  # csrc/rows_bf16.c's TILE


def pack_gemv_weight(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] as the few-row kernel of its dtype reads it, zero-padded: float32 (csrc/gemv.c)
    [out / BLOCK][in / CHUNK][BLOCK][CHUNK]; bfloat16 (csrc/rows_bf16.c) [out / TILE][in / 2][TILE][2]."""
    out_features, in_features = weight.shape
    if weight.dtype == torch.bfloat16:
        padded = torch.nn.functional.pad(weight, (0, in_features % 2, 0, -out_features % ROWS_TILE))
        return padded.view(-1, ROWS_TILE, padded.shape[1] // 2, 2).transpose(1, 2).contiguous()
    padded = torch.nn.functional.pad(weight, (0, -in_features % GEMV_CHUNK, 0, -out_features % GEMV_BLOCK))
    blocks, chunks = padded.shape[0] // GEMV_BLOCK, padded.shape[1] // GEMV_CHUNK
    return padded.view(blocks, GEMV_BLOCK, chunks, GEMV_CHUNK).transpose(1, 2).contiguous()


EPILOGUES = {"none": 0, "swish": 1, "mul": 2, "add": 3}


class DecoderOps:
    """`rms_norm` and `rope_store` (csrc/decoder_ops.c) for one dtype. Tensors are taken as
    they are (rows may be strided, the last dimension must be contiguous); the caller checks
    shapes once per model, not per call."""

    def __init__(self, library: ctypes.CDLL, dtype: torch.dtype) -> None:
        suffix = _SUFFIX[dtype]
        self._norm = getattr(library, f"rms_norm_{suffix}")
        self._norm.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                               ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_int]
        self._norm.restype = None
        self._rope = getattr(library, f"rope_store_{suffix}")
        self._rope.argtypes = [ctypes.POINTER(_RopeStoreArgs), ctypes.c_int]
        self._rope.restype = None
        # the few-row kernel of this dtype: float32 csrc/gemv.c, bfloat16 csrc/rows_bf16.c
        bf16 = dtype == torch.bfloat16
        self._gemv = library.rows_bf16 if bf16 else library.gemv_f32
        self._gemv.argtypes = [ctypes.POINTER(_GemvArgs), ctypes.c_int]
        self._gemv.restype = ctypes.c_int
        # rows up to which it beats oneDNN's packed GEMM; 0: unavailable (no AVX512-BF16)
        self.gemv_rows = GEMV_ROWS_FASTER[dtype] if not bf16 or library.rows_bf16_available() else 0

    def gemv(self, x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None,
             epilogue: str = "none", other: torch.Tensor | None = None) -> torch.Tensor:
        """epilogue(x @ weight.T + bias) for the rows of x [R, in] (float32: at most GEMV_ROWS),
        the weight as pack_gemv_weight made it: "swish", "mul" by `other` [R, out], or "add" `other`."""
        rows, in_features = x.shape
        out = torch.empty((rows, out_features), dtype=x.dtype)
        args = _GemvArgs(
            x.data_ptr(), packed.data_ptr(), 0 if bias is None else bias.data_ptr(),
            0 if other is None else other.data_ptr(), out.data_ptr(), rows, in_features, out_features,
            x.stride(0), 0 if other is None else other.stride(0), out.stride(0), EPILOGUES[epilogue],
        )
        if self._gemv(ctypes.byref(args), torch.get_num_threads()) != 0:
            raise ValueError(f"few-row linear: {rows} rows (float32: at most {GEMV_ROWS}), or no AVX512-BF16 "
                             "for bf16 weights")
        return out

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm over the last dimension of a 2-D `x` into a new tensor."""
        rows, dim = x.shape
        out = torch.empty((rows, dim), dtype=x.dtype)
        self._norm(x.data_ptr(), x.stride(0), weight.data_ptr(), out.data_ptr(), dim, rows, dim, eps,
                   torch.get_num_threads())
        return out

    def rope_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   slots: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor) -> None:
        """Rotate q [T, H, D] and k [T, KVH, D] in place and store k and v at `slots` of one
        layer's pool ([KVH, S, D] each). cos/sin: float32 [T, D]."""
        tokens, heads, dim = q.shape
        args = _RopeStoreArgs(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), cos.data_ptr(), sin.data_ptr(), slots.data_ptr(),
            k_pool.data_ptr(), v_pool.data_ptr(), tokens, q.stride(0), k.stride(0), v.stride(0), k_pool.shape[1],
            heads, k.shape[1], dim,
        )
        self._rope(ctypes.byref(args), torch.get_num_threads())


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled library, or None (logged once with the reason) where it cannot be built."""
    if sys.platform == "win32":
        logger.info("CPU kernels: torch ops (no native kernel build on Windows)")
        return None
    try:
        return ctypes.CDLL(str(_build()))
    except (OSError, RuntimeError) as exc:
        logger.warning("CPU kernels: torch ops, the native kernels are unavailable: %s", exc)
        return None


@functools.cache
def paged_decode_kernel() -> PagedDecodeKernel | None:
    library = _library()
    return None if library is None else PagedDecodeKernel(library)


@functools.cache
def decoder_ops(dtype: torch.dtype) -> DecoderOps | None:
    library = _library()
    return None if library is None or dtype not in _SUFFIX else DecoderOps(library, dtype)
