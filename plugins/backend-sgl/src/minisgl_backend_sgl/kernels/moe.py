"""Fused MoE in Triton (--moe-backend fused): the routed experts of a batch as two grouped GEMMs.

1. Sort: the T x k (token, expert) pairs are ordered by expert and each expert's run padded
   to a multiple of BLOCK_M, so a block of rows belongs to one expert (`block_experts`).
2. Gate/up: one program per (row block, column tile) multiplies its rows of x by its
   expert's w13 [2I, H]^T, straight from x (rows gathered by token, never copied out).
3. SiLU(gate) * up (the activation kernel).
4. Down: the same grouped GEMM over w2 [H, I]^T, each row scaled by its routing weight in
   the epilogue; the k rows of a token are then summed.
The torch reference (reference.fused_moe) defines the result; tests compare the two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activation import silu_mul

BLOCK_M = 16


@triton.jit
def _grouped_gemm(a_ptr, w_ptr, out_ptr, rows_ptr, block_experts_ptr, scale_ptr,
                  n_rows, num_experts, N, K, rows_per_a,
                  stride_a, stride_we, stride_wn, stride_wk, stride_out,
                  SCALE: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    block = tl.program_id(0)
    tile_n = tl.program_id(1)
    expert = tl.load(block_experts_ptr + block).to(tl.int64)
    if expert >= num_experts:  # a block past the last expert's rows
        return
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(rows_ptr + offs_m)  # flattened (token, slot) index, or n_rows for padding
    valid = pair < n_rows
    a_row = (pair // rows_per_a).to(tl.int64)  # the row of `a` this pair reads
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + a_row[:, None] * stride_a + offs_k[None, :],
                    mask=valid[:, None] & (offs_k[None, :] < K), other=0.0)
        w = tl.load(w_ptr + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk,
                    mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0.0)
        if IEEE:  # fp32 stays fp32 (tl.dot would round it to TF32 on the GPU)
            acc += tl.dot(a, w, input_precision="ieee")
        else:
            acc += tl.dot(a, w)
    if SCALE:
        acc *= tl.load(scale_ptr + pair, mask=valid, other=0.0).to(tl.float32)[:, None]
    out_row = pair.to(tl.int64)
    tl.store(out_ptr + out_row[:, None] * stride_out + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=valid[:, None] & (offs_n[None, :] < N))


def _sort_by_expert(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair index per padded row, expert per block of BLOCK_M rows).

    Sizes depend on the shapes alone, never on the routing, so a CUDA graph can capture it:
    the rows are the worst case T*k + E*(BLOCK_M - 1); padding rows hold T*k and blocks past
    the last expert's run hold E, which the kernel skips."""
    flat = topk_ids.flatten()
    pairs = flat.numel()
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = torch.cumsum(padded, 0)
    num_blocks = triton.cdiv(pairs + num_experts * (BLOCK_M - 1), BLOCK_M)
    rows = torch.full((num_blocks * BLOCK_M,), pairs, dtype=torch.int64, device=flat.device)
    order = flat.argsort(stable=True)
    sorted_experts = flat[order]
    rank_in_expert = torch.arange(pairs, device=flat.device) - (torch.cumsum(counts, 0) - counts)[sorted_experts]
    rows[(ends - padded)[sorted_experts] + rank_in_expert] = order
    block_starts = torch.arange(num_blocks, device=flat.device) * BLOCK_M
    block_experts = torch.searchsorted(ends, block_starts, right=True)  # E past the last run
    return rows, block_experts


def _gemm(a: torch.Tensor, w: torch.Tensor, rows: torch.Tensor, block_experts: torch.Tensor, n_pairs: int,
          rows_per_a: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    _, n, k = w.shape
    out = torch.zeros((n_pairs, n), dtype=a.dtype, device=a.device)
    block_n, block_k = (max(16, min(64, triton.next_power_of_2(d))) for d in (n, k))  # tl.dot needs 16+
    grid = (block_experts.numel(), triton.cdiv(n, block_n))
    _grouped_gemm[grid](a, w, out, rows, block_experts, scale if scale is not None else out, n_pairs, w.shape[0], n, k, rows_per_a,
                        a.stride(0), w.stride(0), w.stride(1), w.stride(2), out.stride(0),
                        SCALE=scale is not None, IEEE=a.dtype == torch.float32, BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k)
    return out


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """reference.fused_moe's result: x [T, H], w13 [E, 2I, H], w2 [E, H, I], top-k [T, k]."""
    tokens, top_k = topk_ids.shape
    if tokens == 0:
        return torch.zeros_like(x)
    rows, block_experts = _sort_by_expert(topk_ids, w13.shape[0])
    n_pairs = tokens * top_k
    gate_up = _gemm(x.contiguous(), w13, rows, block_experts, n_pairs, rows_per_a=top_k)
    act = silu_mul(gate_up)
    down = _gemm(act, w2, rows, block_experts, n_pairs, rows_per_a=1, scale=topk_weights.flatten().contiguous())
    return down.view(tokens, top_k, -1).sum(dim=1)
