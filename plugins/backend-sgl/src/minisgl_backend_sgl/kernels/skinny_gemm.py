"""y = x W^T for decode-sized batches (a few to 64 rows), in one Triton launch.

cuBLAS picks tiles for large M; at 1-64 rows a decode layer's projections are reads of the
weight, and its kernels reached a quarter to a half of the copy rate on an H200 (qwen3-0.6b's
gate_up at one row: 12.4 us for 12.6 MB). Here each program streams a BLOCK_N x K/SPLIT_K
slab of W; the K splits of an output tile write float32 partials, and the last to arrive
(an atomic count per tile) sums them in split order, so the result is deterministic, and
resets the count, so a CUDA graph replays it. `SILU_MUL` reads x as [gate | up] and
multiplies by silu(gate) * up, rounded as the separate kernel rounds it: the MLP's down
projection then needs no activation kernel of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

MAX_ROWS = 64  # above this, cuBLAS's tiles win
_MAX_TILES = 1 << 15


@dataclass(frozen=True)
class SkinnyConfig:
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 4


@triton.jit
def _skinny_gemm_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, part_ptr, count_ptr,
    M, N, K, stride_xm, stride_wn, stride_om, k_per_split, split_k, split_stride,
    HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
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
        if SILU_MUL:
            up = tl.load(x_rows + K + rk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            g = a.to(tl.float32)
            a = (g / (1.0 + tl.exp(-g))).to(up.dtype) * up
        w = tl.load(w_rows + rk[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if IEEE:
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
        tile = pid_m * tl.num_programs(0) + pid_n
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")
        if arrived == split_k - 1:  # the last split of this tile sums them all, in split order
            tl.debug_barrier()
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(split_k):
                total += tl.load(part_ptr + s * split_stride + tile_offs, mask=out_mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + out_offs, total.to(out_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(count_ptr + tile, 0)


_counters: dict[torch.device, torch.Tensor] = {}


def _tile_counters(device: torch.device) -> torch.Tensor:
    """Per-tile arrival counts, zero between calls (each call's last split resets its own)."""
    counters = _counters.get(device)
    if counters is None:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("skinny_gemm: run once before capturing a CUDA graph (its tile counters are allocated then)")
        counters = _counters[device] = torch.zeros(_MAX_TILES, dtype=torch.int32, device=device)
    return counters


def block_m(rows: int) -> int:
    return max(16, triton.next_power_of_2(rows))


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: SkinnyConfig,
                silu_mul: bool = False) -> torch.Tensor:
    """x [M, K] (or [M, 2K] = gate | up with `silu_mul`) @ weight [N, K]^T (+ bias) -> [M, N]."""
    m = x.shape[0]
    n, k = weight.shape
    assert x.shape[1] == (2 * k if silu_mul else k) and x.stride(1) == 1 and weight.stride(1) == 1
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    bm = block_m(m)
    k_per_split = triton.cdiv(triton.cdiv(k, config.split_k), config.block_k) * config.block_k
    split_k = triton.cdiv(k, k_per_split)
    grid = (triton.cdiv(n, config.block_n), split_k, triton.cdiv(m, bm))
    counters = part = out
    if split_k > 1:
        assert grid[0] * grid[2] <= _MAX_TILES
        counters = _tile_counters(x.device)
        part = torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
    _skinny_gemm_kernel[grid](
        x, weight, bias if bias is not None else weight, out, part, counters,
        m, n, k, x.stride(0), weight.stride(0), out.stride(0), k_per_split, split_k, m * n,
        HAS_BIAS=bias is not None, SILU_MUL=silu_mul, IEEE=x.dtype == torch.float32, SPLIT=split_k > 1,
        BLOCK_M=bm, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out


@functools.cache
def _num_sms(device: torch.device) -> int:
    # one, for Triton's interpreter on a CPU (the tests)
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


@functools.cache
def pick(m: int, n: int, k: int, device: torch.device) -> SkinnyConfig | None:
    """The configuration for x [m, k] @ W [n, k]^T, or None where cuBLAS is the better kernel:
    tiles of 32 outputs, and enough K splits that the programs fill the GPU twice."""
    if m == 0 or m > MAX_ROWS:
        return None
    block_n, block_k = 32, (128 if k <= 2048 else 256)
    programs = triton.cdiv(n, block_n) * triton.cdiv(m, block_m(m))
    split = 1
    while programs * split < 2 * _num_sms(device) and split < 16 and k // (2 * split) >= block_k:
        split *= 2
    return SkinnyConfig(block_n=block_n, block_k=block_k, split_k=split)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through the skinny GEMM at decode batch sizes."""
    config = pick(x.shape[0], *weight.shape, x.device) if x.stride(1) == 1 else None
    return F.linear(x, weight, bias) if config is None else skinny_gemm(x, weight, bias, config)


def silu_mul_linear_with(silu_mul: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """down(silu(gate) * up) in one skinny GEMM at decode batch sizes, else `silu_mul`, then cuBLAS."""

    def silu_mul_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        config = pick(x.shape[0], *weight.shape, x.device) if x.stride(1) == 1 else None
        if config is None:
            return F.linear(silu_mul(x), weight, bias)
        return skinny_gemm(x, weight, bias, config, silu_mul=True)

    return silu_mul_linear
