"""Attention on the paged KV pool, plugged into transformers through its AttentionInterface.

transformers computes Q, K, V (with rotary embeddings) in its own attention modules and then
calls the function registered under `config._attn_implementation`. Ours writes the new
tokens' K/V for `module.layer_idx` into the pool at the batch's out slots and attends each
request's new queries over its page-table row. The model is called with all requests
flattened into one sequence [1, T]; the per-forward AttentionPlan says which token is whose.

Grouped-query attention never repeats K/V: the G query heads that share a kv head are folded
into that head's query rows ([kv_heads, G * queries, head_dim]).

Decode rows on a CPU go to the native kernel (cpu_kernels.py), which reads each row's slots
in the pool in place. Otherwise, and for prefill chunks, two torch paths: SDPA (fused kernels
on CUDA/MPS), and plain batched matmuls with an additive mask, which on CPUs beat SDPA's CPU
kernels several times over for these shapes (decode queries are only G rows per kv head).

No attention *mask* function is registered on purpose: for an implementation name that the
AttentionMaskInterface does not know, transformers skips building its dense [T, T] causal
mask altogether, which is exactly right since the plan carries its own masks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .attention_plan import AttentionPlan, DecodeGroup, ExtendSegment
from .cpu_kernels import PagedDecodeKernel
from .kv_pool import KVPool

ATTN_IMPLEMENTATION = "minisgl_paged"
CONTEXT_ATTR = "minisgl_context"


class PagedAttentionContext:
    """Per-runner state the attention function reads: the pool and the current forward's plan.
    The runner attaches it to every attention module, so several runners can live in one process."""

    def __init__(self, pool: KVPool, use_sdpa: bool, decode_kernel: PagedDecodeKernel | None = None) -> None:
        self.pool = pool
        self.use_sdpa = use_sdpa
        self.decode_kernel = decode_kernel
        self.plan: AttentionPlan | None = None


def _probs(scores: torch.Tensor, softcap: float | None, bias: torch.Tensor) -> torch.Tensor:
    """softmax(softcap(scores) + bias) in the scores' dtype (torch accumulates bf16/fp16
    softmax in float32 internally, so no float32 copy of the scores is materialised)."""
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    return scores.add_(bias).softmax(-1)


def _decode(
    ctx: PagedAttentionContext,
    dec: DecodeGroup,
    layer: int,
    q: torch.Tensor,  # [Bd, H, D]
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    rows, num_heads, dim = q.shape
    if ctx.decode_kernel is not None:
        out = torch.empty(q.shape, dtype=torch.float32)
        ctx.decode_kernel(q.float().contiguous(), ctx.pool.k[layer], ctx.pool.v[layer], dec.pages, dec.page_rows,
                          dec.lens, out, scale, window, softcap)
        return out.to(q.dtype)
    k, v = ctx.pool.gather(layer, dec.slots)  # [KVH, Bd * Ld, D]
    kv_heads = k.shape[0]
    k = k.view(kv_heads, rows, dec.width, dim)
    v = v.view(kv_heads, rows, dec.width, dim)
    # [KVH, Bd, G, D]: the G query heads of a kv head act as a G-long query "sequence"
    qg = q.view(rows, kv_heads, num_heads // kv_heads, dim).transpose(0, 1)
    if ctx.use_sdpa and softcap is None:
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=dec.mask(window), scale=scale)
    else:
        scores = torch.matmul(qg * scale, k.transpose(-1, -2))  # [KVH, Bd, G, Ld]
        out = torch.matmul(_probs(scores, softcap, dec.bias(window, scores.dtype)), v)
    return out.transpose(0, 1).reshape(rows, num_heads, dim)


def _extend(
    ctx: PagedAttentionContext,
    seg: ExtendSegment,
    q: torch.Tensor,  # [H, E, D]
    k: torch.Tensor,  # [KVH, S, D]
    v: torch.Tensor,  # [KVH, S, D]
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    num_heads, ext, dim = q.shape
    kv_heads = k.shape[0]
    group = num_heads // kv_heads
    if ctx.use_sdpa and softcap is None:
        mask = seg.mask(window, q.device)
        # with a batch dimension: torch's CPU flash kernel takes only 4-D inputs, and 3-D
        # ones fall to the much slower math path (BENCHMARKS.md)
        return F.scaled_dot_product_attention(
            q[None], k[None], v[None], attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=group > 1
        )[0]
    out = torch.empty_like(q)
    qg = q.view(kv_heads, group, ext, dim)
    og = out.view(kv_heads, group, ext, dim)
    for lo, hi, visible, bias in seg.blocks(window, q.dtype, q.device):
        n = hi - lo
        qb = qg[:, :, lo:hi].reshape(kv_heads, group * n, dim) * scale
        scores = torch.matmul(qb, k[:, :visible].transpose(1, 2)).view(kv_heads, group, n, visible)
        probs = _probs(scores, softcap, bias).view(kv_heads, group * n, visible)
        og[:, :, lo:hi] = torch.matmul(probs, v[:, :visible]).view(kv_heads, group, n, dim)
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
    if ctx is None:  # not a layer of the language model: a vision tower's, with its own mask
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if ctx.plan is None:
        raise RuntimeError(
            f"{ATTN_IMPLEMENTATION} attention called outside a minisgl forward "
            f"(module {type(module).__name__} has no current batch)"
        )
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"{ATTN_IMPLEMENTATION}: attention sinks (s_aux) are not supported")
    dim = query.shape[-1]
    ctx.pool.write(module.layer_idx, ctx.plan.out_slots, key[0], value[0])
    out = attend(ctx, module.layer_idx, query[0].transpose(0, 1), key[0], value[0],
                 scaling if scaling is not None else dim**-0.5, kwargs.get("sliding_window"), kwargs.get("softcap"))
    return out.unsqueeze(0), None


def attend(
    ctx: PagedAttentionContext,
    layer: int,
    q_tokens: torch.Tensor,  # [T, H, D]
    key: torch.Tensor,  # [KVH, T, D]: this forward's keys, already in the pool
    value: torch.Tensor,  # [KVH, T, D]
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """Each token's attention output [T, H, D] under the current plan: decode rows over their
    page-table slots, prefill chunks over their cached prefix and themselves."""
    plan = ctx.plan
    assert plan is not None
    dec = plan.decode
    if dec is not None:
        q = q_tokens if dec.token_index is None else q_tokens.index_select(0, dec.token_index)
        out_dec = _decode(ctx, dec, layer, q.contiguous(), scale, window, softcap)
        if dec.token_index is None:
            return out_dec

    out = torch.empty(q_tokens.shape, dtype=q_tokens.dtype, device=q_tokens.device)
    if dec is not None:
        out.index_copy_(0, dec.token_index, out_dec)
    for seg in plan.extends:
        if seg.slots is None:  # nothing cached before this chunk: its own K/V are the whole context
            k, v = key[:, seg.start : seg.end], value[:, seg.start : seg.end]
        else:
            k, v = ctx.pool.gather(layer, seg.slots)
        q = q_tokens[seg.start : seg.end].transpose(0, 1)  # [H, E, D]
        out[seg.start : seg.end] = _extend(ctx, seg, q, k, v, scale, window, softcap).transpose(0, 1)
    return out


def register() -> str:
    """Make the implementation known to transformers (idempotent) and return its name."""
    if ATTN_IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)
    return ATTN_IMPLEMENTATION
