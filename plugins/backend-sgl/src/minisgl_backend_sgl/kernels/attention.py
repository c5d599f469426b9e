"""Paged attention in Triton over the KV pool, reading each request's slots from its page-table row.

The pool keeps K and V per layer as [slots, kv_heads, head_dim]; a request's row of the page
table lists the slot of each of its positions, so a block of keys is a gather of rows.

- `extend_attention`: prefill chunks (and any mixed batch). Each program takes BLOCK_M new
  tokens of one request and one query head and attends, causally, over everything the
  request holds: the cached prefix and the chunk itself (whose K/V were stored first). Keys
  before the block's first query are visible to all of its queries, so only the blocks on
  the diagonal apply the causal mask.
- `decode_attention`: one new token per request. Flash-decoding: the keys of a request are
  cut into NUM_SPLITS ranges, each program handles one range for all query heads that share
  a KV head (GQA packing, so K/V are read once per group), and a second kernel merges the
  partial results by their log-sum-exp (with one split the first writes the answer itself;
  merging in the split kernel, by its last program to finish, measured slower at 16 splits).
  NUM_SPLITS depends only on the batch shape, never on the lengths, so the launch is the
  same at every step and fits in a CUDA graph.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import pdl
from .pdl import wait_previous

LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _attend_keys(q, acc, m_i, l_i, k_cache, v_cache, row, q_pos, start, end, kv_end, kv_head, stride_ks, stride_kh,
                 sm_scale_log2, offs_d, d_mask, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """Online softmax of q's rows over the keys [start, end) of a page-table row (keys from
    kv_end on are masked): both kernels' inner loop. CAUSAL masks each query's later keys
    (extend's diagonal blocks; q_pos is read only then)."""
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < kv_end
        slots = tl.load(row + offs_n, mask=n_mask, other=0).to(tl.int64)
        k = tl.load(
            k_cache + slots[None, :] * stride_ks + kv_head * stride_kh + offs_d[:, None],
            mask=n_mask[None, :] & d_mask[:, None], other=0.0,
        )
        qk = _dot(q, k, IEEE) * sm_scale_log2
        if CAUSAL:
            qk = tl.where((offs_n[None, :] <= q_pos[:, None]) & n_mask[None, :], qk, float("-inf"))
        else:
            qk = tl.where(n_mask[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))  # the range's first key is visible to every row: finite
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_cache + slots[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :],
            mask=n_mask[:, None] & d_mask[None, :], other=0.0,
        )
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _extend_kernel(
    q_ptr, k_cache, v_cache, o_ptr, page_table, qo_start_ptr, extend_lens_ptr, prefix_lens_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_ks, stride_kh, stride_pt, sm_scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    m_block = tl.program_id(2)
    extend_len = tl.load(extend_lens_ptr + b)
    if m_block * BLOCK_M >= extend_len:
        return
    prefix_len = tl.load(prefix_lens_ptr + b)
    qo_start = tl.load(qo_start_ptr + b).to(tl.int64)
    kv_head = h // GROUP

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < extend_len
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(
        q_ptr + (qo_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=m_mask[:, None] & d_mask[None, :], other=0.0,
    )
    q_pos = prefix_len + offs_m  # position of each query in its sequence

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    kv_end = prefix_len + tl.minimum((m_block + 1) * BLOCK_M, extend_len)
    # every query of the block sees all keys before its first query: whole BLOCK_N blocks of them unmasked
    unmasked_end = (prefix_len + m_block * BLOCK_M) // BLOCK_N * BLOCK_N
    row = page_table + b.to(tl.int64) * stride_pt
    acc, m_i, l_i = _attend_keys(q, acc, m_i, l_i, k_cache, v_cache, row, q_pos, 0, unmasked_end, kv_end, kv_head,
                                 stride_ks, stride_kh, sm_scale_log2, offs_d, d_mask, BLOCK_N, False, IEEE)
    acc, m_i, l_i = _attend_keys(q, acc, m_i, l_i, k_cache, v_cache, row, q_pos, unmasked_end, kv_end, kv_end, kv_head,
                                 stride_ks, stride_kh, sm_scale_log2, offs_d, d_mask, BLOCK_N, True, IEEE)
    out = acc / l_i[:, None]
    tl.store(
        o_ptr + (qo_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
        out.to(o_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :],
    )


def extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    qo_start: torch.Tensor,
    extend_lens: torch.Tensor,
    prefix_lens: torch.Tensor,
    max_extend_len: int,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """q: [T, H, D] (any strides with unit last dim); caches [slots, KVH, D]; returns [T, H, D].
    block_m, block_n, num_warps and num_stages shape the kernel (gpu/bench_prefill_attention.py
    sweeps them)."""
    n_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    if out is None:
        out = torch.empty((n_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    batch = extend_lens.shape[0]
    if n_tokens == 0 or batch == 0:
        return out
    # 16-bit heads up to 128 wide: 128 queries x 64 keys in 3 stages, the fastest of
    # bench_prefill_attention.py's sweep on an H100 at every shape (BENCHMARKS.md)
    wide = q.dtype != torch.float32 and head_dim <= 128
    default_m, default_n = (128, 64) if wide else (64, 64) if head_dim <= 128 else (32, 32)
    block_m, block_n = block_m or default_m, block_n or default_n
    grid = (batch, num_heads, triton.cdiv(max_extend_len, block_m))
    _extend_kernel[grid](
        q, k_cache, v_cache, out, page_table, qo_start, extend_lens, prefix_lens,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_cache.stride(0), k_cache.stride(1),
        page_table.stride(0), LOG2E / math.sqrt(head_dim),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=block_m, BLOCK_N=block_n, IEEE=q.dtype == torch.float32, num_warps=num_warps or 4,
        num_stages=num_stages or (3 if wide else 2),
    )
    return out


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache, v_cache, o_ptr, mid_o, mid_lse, page_table, seq_lens_ptr,
    stride_qt, stride_qh, stride_ks, stride_kh, stride_pt, stride_ot, stride_oh, sm_scale_log2,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_previous(PDL)
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    chunk = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)

    offs_g = tl.arange(0, BLOCK_G)
    g_mask = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(
        q_ptr + b * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_mask[:, None] & d_mask[None, :], other=0.0,
    )
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    row = page_table + b * stride_pt
    acc, m_i, l_i = _attend_keys(q, acc, m_i, l_i, k_cache, v_cache, row, offs_g, start, end, end, kv_head,
                                 stride_ks, stride_kh, sm_scale_log2, offs_d, d_mask, BLOCK_N, False, IEEE)
    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    if NUM_SPLITS == 1:  # the whole answer: no partials to merge
        tl.store(o_ptr + b * stride_ot + heads[:, None] * stride_oh + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=g_mask[:, None] & d_mask[None, :])
    else:
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        # mid buffers: [B, H, NUM_SPLITS, D] and [B, H, NUM_SPLITS], contiguous
        mid_row = (b * NUM_HEADS + heads) * NUM_SPLITS + split
        tl.store(mid_o + mid_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=g_mask[:, None] & d_mask[None, :])
        tl.store(mid_lse + mid_row, lse, mask=g_mask)


@triton.jit
def _decode_merge_kernel(
    mid_o, mid_lse, o_ptr, stride_ot, stride_oh,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):
    wait_previous(PDL)
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    s_mask = offs_s < NUM_SPLITS
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    base = (b * NUM_HEADS + h) * NUM_SPLITS
    lse = tl.load(mid_lse + base + offs_s, mask=s_mask, other=float("-inf"))
    weights = tl.exp2(lse - tl.max(lse, axis=0))  # split 0 always holds a key: the max is finite
    parts = tl.load(mid_o + (base + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    out = tl.sum(weights[:, None] * parts, axis=0) / tl.sum(weights, axis=0)
    tl.store(o_ptr + b * stride_ot + h * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty), mask=d_mask)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    num_splits: int,
    out: torch.Tensor | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int | None = None,
) -> torch.Tensor:
    """q: [B, H, D] (unit last stride); page_table [B, >= max seq_len]; seq_lens int [B] (>= 1).
    block_n, num_warps and num_stages shape the split kernel (gpu/tune_decode.py sweeps them;
    128 keys in 3 stages read a 16-bit pool closest to the copy rate, BENCHMARKS.md; float32
    tiles that large would not fit in shared memory)."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty((batch, num_heads, head_dim), dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    mid_o = mid_lse = out  # unused with one split
    if num_splits > 1:
        mid_o = torch.empty((batch, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        mid_lse = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(head_dim)
    wide = q.dtype != torch.float32 and head_dim <= 128
    block_n = block_n or (128 if wide else 64)
    num_stages = num_stages or (3 if wide else 2)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, out, mid_o, mid_lse, page_table, seq_lens,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), page_table.stride(0),
        out.stride(0), out.stride(1), LOG2E / math.sqrt(head_dim),
        NUM_HEADS=num_heads, GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, NUM_SPLITS=num_splits,
        IEEE=q.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
        **pdl.launch_options(q.device),
    )
    if num_splits == 1:
        return out
    _decode_merge_kernel[(batch, num_heads)](
        mid_o, mid_lse, out, out.stride(0), out.stride(1),
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
        NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits), num_warps=4,
        **pdl.launch_options(q.device),
    )
    return out
