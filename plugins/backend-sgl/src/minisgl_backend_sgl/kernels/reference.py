"""Plain torch versions of the Triton kernels, with the same signatures and semantics.

They define what the kernels compute (tests compare against them) and let the model code
run on a CPU in tests. They are written for clarity, not speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    if residual is not None:
        residual.copy_((x.float() + residual.float()).to(residual.dtype))
        x = residual
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * normed.to(weight.dtype)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def _norm_rope(x: torch.Tensor, weight: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [T, heads, D] -> rotated float32."""
    if weight is not None:
        x = rmsnorm(x, weight, eps)
    xf = x.float()
    half = xf.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


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
    n = qkv.shape[0]
    if n == 0:
        return
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    q = qkv[:, :q_size].view(n, num_heads, head_dim)
    k = qkv[:, q_size : q_size + kv_size].view(n, num_kv_heads, head_dim)
    v = qkv[:, q_size + kv_size :].view(n, num_kv_heads, head_dim)
    table = cos_sin[positions]
    cos, sin = table[:, : head_dim // 2], table[:, head_dim // 2 :]
    q.copy_(_norm_rope(q, q_norm, cos, sin, eps).to(qkv.dtype))
    k_cache[slots] = _norm_rope(k, k_norm, cos, sin, eps).to(k_cache.dtype)
    v_cache[slots] = v.to(v_cache.dtype)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
    """q [M, H, D] at sequence positions q_pos; keys/values [L, KVH, D] at positions 0..L-1."""
    group = q.shape[1] // keys.shape[1]
    keys = keys.float().repeat_interleave(group, dim=1)
    values = values.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("mhd,lhd->hml", q.float(), keys) / math.sqrt(q.shape[-1])
    visible = torch.arange(keys.shape[0], device=q.device)[None, :] <= q_pos[:, None]
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return torch.einsum("hml,lhd->mhd", scores.softmax(dim=-1), values)


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
) -> torch.Tensor:
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for b in range(extend_lens.shape[0]):
        start, ext, pre = int(qo_start[b]), int(extend_lens[b]), int(prefix_lens[b])
        if ext == 0:
            continue
        slots = page_table[b, : pre + ext].long()
        q_pos = torch.arange(pre, pre + ext, device=q.device)
        out[start : start + ext] = _attend(q[start : start + ext], k_cache[slots], v_cache[slots], q_pos).to(out.dtype)
    return out


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    num_splits: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for b in range(q.shape[0]):
        length = int(seq_lens[b])
        slots = page_table[b, :length].long()
        q_pos = torch.tensor([length - 1], device=q.device)
        out[b : b + 1] = _attend(q[b : b + 1], k_cache[slots], v_cache[slots], q_pos).to(out.dtype)
    return out


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """Routed experts: token t's output is sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x_t),
    each expert SiLU(x W_gate^T) * (x W_up^T) W_down^T, with w13 [E, 2I, H] (gate | up) and
    w2 [E, H, I]. The tokens of each expert run together (sorted by expert)."""
    out = torch.zeros_like(x)
    for expert in topk_ids.unique().tolist():
        rows, slot = (topk_ids == expert).nonzero(as_tuple=True)
        h = silu_mul(x[rows] @ w13[expert].t())
        y = h @ w2[expert].t()
        out.index_add_(0, rows, y * topk_weights[rows, slot, None].to(y.dtype))
    return out
