"""One Triton pass per token after the qkv projection: optional per-head RMSNorm of q and k
(Qwen3), rotary embedding of q (in place) and k, and the store of k and v into the KV pool
at the token's slot. Replaces about a dozen small torch ops per layer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .pdl import wait_previous


@triton.jit
def _norm_rope(x1, x2, w_ptr, cos, sin, d, d_mask, eps, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, QK_NORM: tl.constexpr):
    """x1, x2: [heads, half] float32 halves of each head. Returns rotated halves (float32)."""
    if QK_NORM:
        dtype = w_ptr.dtype.element_ty
        inv = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / HEAD_DIM + eps)
        w1 = tl.load(w_ptr + d, mask=d_mask, other=0.0)
        w2 = tl.load(w_ptr + HALF + d, mask=d_mask, other=0.0)
        x1 = ((x1 * inv[:, None]).to(dtype) * w1[None, :]).to(tl.float32)
        x2 = ((x2 * inv[:, None]).to(dtype) * w2[None, :]).to(tl.float32)
    o1 = x1 * cos[None, :] - x2 * sin[None, :]
    o2 = x2 * cos[None, :] + x1 * sin[None, :]
    return o1, o2


@triton.jit
def _rope_store_kernel(
    qkv_ptr, positions_ptr, slots_ptr, cos_sin_ptr, q_norm_ptr, k_norm_ptr, k_cache_ptr, v_cache_ptr,
    stride_qkv, stride_cs, stride_cache_slot, eps,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HALF: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_KVH: tl.constexpr, BLOCK_HALF: tl.constexpr, QK_NORM: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_previous(PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + t).to(tl.int64)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)
    d_mask = d < HALF
    cos = tl.load(cos_sin_ptr + pos * stride_cs + d, mask=d_mask, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + d, mask=d_mask, other=0.0)
    row = qkv_ptr + t * stride_qkv

    h = tl.arange(0, BLOCK_H)
    q_mask = (h < NUM_HEADS)[:, None] & d_mask[None, :]
    q_off = h[:, None] * HEAD_DIM + d[None, :]
    q1 = tl.load(row + q_off, mask=q_mask, other=0.0).to(tl.float32)
    q2 = tl.load(row + q_off + HALF, mask=q_mask, other=0.0).to(tl.float32)
    q1, q2 = _norm_rope(q1, q2, q_norm_ptr, cos, sin, d, d_mask, eps, HEAD_DIM, HALF, QK_NORM)
    dtype = qkv_ptr.dtype.element_ty
    tl.store(row + q_off, q1.to(dtype), mask=q_mask)
    tl.store(row + q_off + HALF, q2.to(dtype), mask=q_mask)

    kh = tl.arange(0, BLOCK_KVH)
    kv_mask = (kh < NUM_KV_HEADS)[:, None] & d_mask[None, :]
    kv_off = kh[:, None] * HEAD_DIM + d[None, :]
    k_row = row + NUM_HEADS * HEAD_DIM
    k1 = tl.load(k_row + kv_off, mask=kv_mask, other=0.0).to(tl.float32)
    k2 = tl.load(k_row + kv_off + HALF, mask=kv_mask, other=0.0).to(tl.float32)
    k1, k2 = _norm_rope(k1, k2, k_norm_ptr, cos, sin, d, d_mask, eps, HEAD_DIM, HALF, QK_NORM)
    cache_dtype = k_cache_ptr.dtype.element_ty
    k_dst = k_cache_ptr + slot * stride_cache_slot
    tl.store(k_dst + kv_off, k1.to(cache_dtype), mask=kv_mask)
    tl.store(k_dst + kv_off + HALF, k2.to(cache_dtype), mask=kv_mask)

    v_row = k_row + NUM_KV_HEADS * HEAD_DIM
    v_dst = v_cache_ptr + slot * stride_cache_slot
    v1 = tl.load(v_row + kv_off, mask=kv_mask, other=0.0)
    v2 = tl.load(v_row + kv_off + HALF, mask=kv_mask, other=0.0)
    tl.store(v_dst + kv_off, v1.to(cache_dtype), mask=kv_mask)
    tl.store(v_dst + kv_off + HALF, v2.to(cache_dtype), mask=kv_mask)


def rope_and_store_kv(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    cos_sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    q_norm: torch.Tensor | None = None,
    k_norm: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> None:
    """qkv: [T, (H + 2 KVH) * D], q rotated in place; k, v written to caches [slots, KVH, D] at `slots`."""
    n_tokens = qkv.shape[0]
    if n_tokens == 0:
        return
    assert qkv.stride(1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    half = head_dim // 2
    qk_norm = q_norm is not None
    _rope_store_kernel[(n_tokens,)](
        qkv, positions, slots, cos_sin, q_norm if qk_norm else qkv, k_norm if qk_norm else qkv, k_cache, v_cache,
        qkv.stride(0), cos_sin.stride(0), k_cache.stride(0), eps,
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, HALF=half,
        BLOCK_H=triton.next_power_of_2(num_heads), BLOCK_KVH=triton.next_power_of_2(num_kv_heads),
        BLOCK_HALF=triton.next_power_of_2(half), QK_NORM=qk_norm, num_warps=4, **pdl.launch_options(qkv.device),
    )
