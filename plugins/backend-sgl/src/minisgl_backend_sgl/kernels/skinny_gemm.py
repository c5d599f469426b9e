"""y = x W^T for decode batches of a few rows, in one Triton launch, where it beats cuBLAS.

At a few rows a projection is a read of its weight, and the kernels cuBLAS picks for some
shapes use few programs, so on those this kernel is faster (gpu/tune_skinny.py,
BENCHMARKS.md; most other shapes are even).
Each program streams a BLOCK_N x K/SPLIT_K slab of W, through the tensor cores (tl.dot pads
the rows to 16) or, up to 4 rows, in a GEMV form on the CUDA cores with the rows unpadded,
so a program can keep more of W in flight for the same registers (`choose` times both). The K splits of an output tile write
float32 partials, and the last to arrive (an arrival count per tile) sums them in split
order, so the result is deterministic, and resets the count, so a CUDA graph replays it.

Which kernel serves a (rows, shape) is measured once per runner, on the model's own weights
(`choose`), and only for the batch sizes decode graphs capture up to MAX_ROWS.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import pdl
from .pdl import wait_previous

logger = logging.getLogger(__name__)

MAX_ROWS = 16  # from 16 rows up cuBLAS is as fast on every projection gpu/tune_skinny.py covers
_MIN_GAIN = 1.1  # the skinny GEMM must be this much faster to be chosen


@dataclass(frozen=True)
class SkinnyConfig:
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 4
    gemv: bool = False  # CUDA-core products, up to GEMV_ROWS rows


GEMV_ROWS = 4


@triton.jit
def _skinny_gemm_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, part_ptr, count_ptr,
    M, N, K, stride_xm, stride_wn, stride_om, k_per_split, split_k, split_stride,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr, GEMV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    wait_previous(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < N
    x_rows = x_ptr + rm[:, None].to(tl.int64) * stride_xm
    w_rows = w_ptr + rn[None, :].to(tl.int64) * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * k_per_split
    for k in range(k_start, k_start + k_per_split, BLOCK_K):
        rk = k + tl.arange(0, BLOCK_K)
        k_mask = rk < K
        a = tl.load(x_rows + rk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_rows + rk[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if GEMV:
            acc += tl.sum(a.to(tl.float32)[:, :, None] * w.to(tl.float32)[None, :, :], axis=1)
        elif IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    out_mask = m_mask[:, None] & n_mask[None, :]
    out_offs = rm[:, None].to(tl.int64) * stride_om + rn[None, :]
    if not SPLIT:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tile_offs = rm[:, None].to(tl.int64) * N + rn[None, :]
        tl.store(part_ptr + pid_k * split_stride + tile_offs, acc, mask=out_mask)
        tl.debug_barrier()  # every thread's partial is written before the count says so
        counter = count_ptr + pid_m * tl.num_programs(0) + pid_n
        if tl.atomic_add(counter, 1, sem="acq_rel") == split_k - 1:  # the last split sums them, in split order
            tl.debug_barrier()
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(split_k):
                total += tl.load(part_ptr + s * split_stride + tile_offs, mask=out_mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + out_offs, total.to(out_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(counter, 0)  # zero again for the next call (and graph replay)


_COUNTERS = 1 << 16  # output tiles of one call, at most
_counters: dict[torch.device, torch.Tensor] = {}


def arrival_counters(device: torch.device, tiles: int) -> torch.Tensor:
    """int32 zeros, one per output tile; each tile's last split puts its count back to zero,
    so the next call and every graph replay find zeros. Allocated once, on the first eager
    call (a graph captured later keeps using the same buffer)."""
    if tiles > _COUNTERS:
        raise ValueError(f"skinny GEMM of {tiles} output tiles; at most {_COUNTERS}")
    counters = _counters.get(device)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("skinny GEMM: run it once eagerly before capturing it in a CUDA graph")
        counters = _counters[device] = torch.zeros(_COUNTERS, dtype=torch.int32, device=device)
    return counters


def block_m(rows: int, gemv: bool = False) -> int:
    return triton.next_power_of_2(rows) if gemv else max(16, triton.next_power_of_2(rows))


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: SkinnyConfig) -> torch.Tensor:
    """x [M, K] @ weight [N, K]^T (+ bias) -> [M, N]."""
    m = x.shape[0]
    n, k = weight.shape
    assert x.shape[1] == k and x.stride(1) == 1 and weight.stride(1) == 1
    assert m <= GEMV_ROWS or not config.gemv, f"the GEMV form serves up to {GEMV_ROWS} rows, not {m}"
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    bm = block_m(m, config.gemv)
    k_per_split = triton.cdiv(triton.cdiv(k, config.split_k), config.block_k) * config.block_k
    split_k = triton.cdiv(k, k_per_split)
    grid = (triton.cdiv(n, config.block_n), split_k, triton.cdiv(m, bm))
    counters = part = out
    if split_k > 1:
        counters = arrival_counters(x.device, grid[0] * grid[2])
        part = torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
    _skinny_gemm_kernel[grid](
        x, weight, bias if bias is not None else weight, out, part, counters,
        m, n, k, x.stride(0), weight.stride(0), out.stride(0), k_per_split, split_k, m * n,
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, SPLIT=split_k > 1, GEMV=config.gemv,
        BLOCK_M=bm, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        num_warps=config.num_warps, num_stages=config.num_stages, **pdl.launch_options(x.device),
    )
    return out


# (rows, N, K, device) -> the configuration chosen by `choose`; absent: cuBLAS
_chosen: dict[tuple[int, int, int, torch.device], SkinnyConfig] = {}


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through the skinny GEMM where `choose` measured it faster."""
    config = _chosen.get((x.shape[0], weight.shape[0], weight.shape[1], x.device)) if _chosen else None
    if config is None or x.stride(1) != 1:
        return F.linear(x, weight, bias)
    return skinny_gemm(x, weight, bias, config)


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _splits(tiles: int, k: int, block_k: int, device: torch.device) -> list[int]:
    """K splits from none to enough to fill the GPU twice over."""
    fill = 1
    while tiles * fill < 2 * _num_sms(device) and fill < 16 and k // (2 * fill) >= block_k:
        fill *= 2
    return sorted({1, max(1, fill // 4), fill})


def candidates(rows: int, n: int, k: int, device: torch.device) -> list[SkinnyConfig]:
    """Tensor-core tiles of 32 outputs; up to GEMV_ROWS rows also GEMV tiles of 8 and 16
    outputs (a thread's products of a row and a K block live in registers: fewer outputs
    a program at more rows). Each with its K splits."""
    block_k = 128 if k <= 2048 else 256
    configs = [SkinnyConfig(32, block_k, split) for split in _splits(triton.cdiv(n, 32) * triton.cdiv(rows, block_m(rows)),
                                                                     k, block_k, device)]
    if rows <= GEMV_ROWS:
        gemv_k = 512 if rows == 1 else 256
        for block_n in (8, 16):
            configs += [SkinnyConfig(block_n, gemv_k, split, gemv=True)
                        for split in _splits(triton.cdiv(n, block_n), k, gemv_k, device)]
    return configs


def seconds_per_call(fn, weights: list[torch.Tensor]) -> float:
    """One call per weight, captured in a graph and replayed: each weight read from memory
    once per pass, as a decode step reads each layer's."""
    for w in weights[:2]:
        fn(w)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in weights:
            fn(w)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / (5 * len(weights))


@torch.inference_mode()
def choose(weights: list[torch.Tensor], batch_sizes: list[int]) -> None:
    """For each projection shape among `weights` (a model's, all layers) and each batch size
    up to MAX_ROWS, time cuBLAS and the skinny GEMM's candidates; keep the skinny GEMM where
    it is at least 10% faster. Logged, so a user sees which kernel serves what."""
    by_shape: dict[tuple[int, int, torch.dtype], list[torch.Tensor]] = {}
    for w in weights:
        by_shape.setdefault((*w.shape, w.dtype), []).append(w)
    picked = []
    for (n, k, dtype), group in by_shape.items():
        device = group[0].device
        for rows in (r for r in batch_sizes if r <= MAX_ROWS):
            x = torch.randn(rows, k, device=device, dtype=dtype)
            cublas = seconds_per_call(lambda w, x=x: F.linear(x, w), group)
            best, best_config = cublas / _MIN_GAIN, None
            for config in candidates(rows, n, k, device):
                t = seconds_per_call(lambda w, x=x, c=config: skinny_gemm(x, w, None, c), group)
                if t < best:
                    best, best_config = t, config
            if best_config is not None:
                _chosen[(rows, n, k, device)] = best_config
                c = best_config
                picked.append(f"{n}x{k} at {rows} rows ({cublas * 1e6:.1f} -> {best * 1e6:.1f} us, "
                              f"{'GEMV' if c.gemv else 'tensor cores'} {c.block_n}x{c.block_k}, split {c.split_k})")
    logger.info("skinny GEMM serves %s; cuBLAS the rest", ", ".join(picked) if picked else "no projection")
