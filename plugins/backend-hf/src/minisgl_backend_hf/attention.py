"""Attention on the paged KV pool, plugged into transformers through its AttentionInterface.

transformers computes Q, K, V (with rotary embeddings) in its own attention modules and then
calls the function registered under `config._attn_implementation`. Ours writes the new
tokens' K/V for `module.layer_idx` into the pool at the batch's out slots and attends each
request's new queries over its page-table row. The model is called with all requests
flattened into one sequence [1, T]; the per-forward AttentionPlan says which token is whose.

No attention *mask* function is registered on purpose: for an implementation name that the
AttentionMaskInterface does not know, transformers skips building its dense [T, T] causal
mask altogether, which is exactly right since the plan carries its own masks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from .attention_plan import AttentionPlan
from .kv_pool import KVPool

ATTN_IMPLEMENTATION = "minisgl_paged"
CONTEXT_ATTR = "minisgl_context"
# Extend chunks are attended in query blocks so the [heads, block, seq] scores stay in cache.
QUERY_BLOCK = 256


class PagedAttentionContext:
    """Per-runner state the attention function reads: the pool and the current forward's plan.
    The runner attaches it to every attention module, so several runners can live in one process."""

    def __init__(self, pool: KVPool, num_heads: int, use_sdpa: bool) -> None:
        self.pool = pool
        self.num_heads = num_heads
        self.use_sdpa = use_sdpa
        self.plan: AttentionPlan | None = None


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float | None,
    use_sdpa: bool,
) -> torch.Tensor:
    """softmax(q k^T * scale [masked]) v over matching leading dims; mask True = attend.
    Without a mask the attention is causal with queries aligned to the last keys."""
    if use_sdpa and softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        q_len, k_len = q.shape[-2], k.shape[-2]
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
    scores.masked_fill_(~mask, float("-inf"))
    return torch.matmul(scores.softmax(-1).to(v.dtype), v)


def _attend_extend(
    q: torch.Tensor,  # [H, E, D]
    k: torch.Tensor,  # [KVH, S, D]
    v: torch.Tensor,  # [KVH, S, D]
    mask: torch.Tensor | None,  # [E, S] or None (causal, S == E)
    scale: float,
    softcap: float | None,
    use_sdpa: bool,
) -> torch.Tensor:
    """One chunk's queries over its context, grouped-query: query heads h*G..h*G+G-1 share
    kv head h, so queries are folded to [KVH, G*E, D] instead of repeating K and V."""
    num_heads, ext, dim = q.shape
    kv_heads, seq = k.shape[0], k.shape[1]
    group = num_heads // kv_heads
    if mask is None:
        mask = torch.ones(ext, seq, dtype=torch.bool, device=q.device).tril(seq - ext)
    out = torch.empty_like(q)
    qg = q.view(kv_heads, group, ext, dim)
    og = out.view(kv_heads, group, ext, dim)
    for lo in range(0, ext, QUERY_BLOCK):
        hi = min(lo + QUERY_BLOCK, ext)
        # keys past this block's last query position are masked for every query: skip them
        visible = seq - ext + hi
        block_mask = mask[lo:hi, :visible]
        qb = qg[:, :, lo:hi].reshape(kv_heads, group * (hi - lo), dim)
        mb = block_mask.expand(group, hi - lo, visible).reshape(group * (hi - lo), visible)
        ob = _attend(qb, k[:, :visible], v[:, :visible], mb, scale, softcap, use_sdpa)
        og[:, :, lo:hi] = ob.view(kv_heads, group, hi - lo, dim)
    return out


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, H, T, D]
    key: torch.Tensor,  # [1, KVH, T, D]
    value: torch.Tensor,  # [1, KVH, T, D]
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    ctx: PagedAttentionContext | None = getattr(module, CONTEXT_ATTR, None)
    if ctx is None or ctx.plan is None:
        raise RuntimeError(
            f"{ATTN_IMPLEMENTATION} attention called outside a minisgl forward "
            f"(module {type(module).__name__} has no current batch)"
        )
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"{ATTN_IMPLEMENTATION}: attention sinks (s_aux) are not supported")
    plan, pool, layer = ctx.plan, ctx.pool, module.layer_idx
    _, num_heads, num_tokens, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    window = kwargs.get("sliding_window")
    softcap = kwargs.get("softcap")

    new_k = key[0].transpose(0, 1)  # [T, KVH, D]
    new_v = value[0].transpose(0, 1)
    pool.write(layer, plan.out_slots, new_k, new_v)
    q_tokens = query[0].transpose(0, 1)  # [T, H, D]; contiguous as transformers builds it

    dec = plan.decode
    if dec is not None:
        q = q_tokens if dec.token_index is None else q_tokens.index_select(0, dec.token_index)
        rows = q.shape[0]
        # grouped-query decode: each kv head's G query heads form a G-long query "sequence"
        qd = q.reshape(rows, kv_heads, num_heads // kv_heads, dim)
        kd = pool.k[layer].index_select(0, dec.slots).view(rows, dec.width, kv_heads, dim).transpose(1, 2)
        vd = pool.v[layer].index_select(0, dec.slots).view(rows, dec.width, kv_heads, dim).transpose(1, 2)
        out_dec = _attend(qd, kd, vd, dec.mask(window), scale, softcap, ctx.use_sdpa).reshape(rows, num_heads, dim)
        if dec.token_index is None:
            return out_dec.unsqueeze(0), None

    out = torch.empty_like(q_tokens)
    if dec is not None:
        out.index_copy_(0, dec.token_index, out_dec)
    for seg in plan.extends:
        q = q_tokens[seg.start : seg.end].transpose(0, 1)  # [H, E, D]
        if seg.slots is None:  # nothing cached before this chunk: its own K/V are the context
            k = key[0, :, seg.start : seg.end]
            v = value[0, :, seg.start : seg.end]
        else:
            k = pool.k[layer].index_select(0, seg.slots).transpose(0, 1)
            v = pool.v[layer].index_select(0, seg.slots).transpose(0, 1)
        mask = seg.mask(window, query.device)
        out[seg.start : seg.end] = _attend_extend(q, k, v, mask, scale, softcap, ctx.use_sdpa).transpose(0, 1)
    return out.unsqueeze(0), None


def register() -> str:
    """Make the implementation known to transformers (idempotent) and return its name."""
    if ATTN_IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)
    return ATTN_IMPLEMENTATION
