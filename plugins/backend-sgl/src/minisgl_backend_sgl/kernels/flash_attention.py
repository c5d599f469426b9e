"""`--attention-backend fa`: FlashAttention-2 as PyTorch ships it (`torch.nn.attention.varlen`),
over the paged pool.

The kernel reads keys packed request by request ([keys, kv_heads, head_dim] with cumulative
offsets), so each step first gathers every request's slots, prefix and new tokens, out of
the pool: for a 32k-token prompt of an 8B model 128 MB a layer, well under 1% of the
attention's own time, but with the offsets and torch's dispatch a fixed 0.2-0.3 ms a layer
that makes fa the slower kernel on short prompts (BENCHMARKS.md). Flash aligns a causal mask to the bottom right when a request has more
keys than queries, which is where a chunk after a cached prefix sits. A decode row is a
one-token query, so the same call serves both phases; it needs the step's key count on the
host, which a CUDA graph replayed at any length does not have, so decode by `fa` runs eagerly.

CUDA only, 16-bit only (FlashAttention has no float32 kernel): `unavailable` says why not.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
import torch.nn.functional as F

from ..forward_meta import ForwardMeta


@functools.cache
def _varlen():
    """torch's varlen_attn with the keywords this torch spells a bottom-right causal mask and
    GQA with, or None where torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    options = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "enable_gqa" in params:
        options["enable_gqa"] = True
    return functools.partial(varlen_attn, **options)


def unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why `fa` cannot run here, or None when it can."""
    if device.type != "cuda":
        return f"fa runs FlashAttention on CUDA; this runner is on {device.type}"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"fa runs FlashAttention, which has 16-bit kernels only, and the model runs in {str(dtype).removeprefix('torch.')} (--dtype bfloat16)"
    if _varlen() is None:
        return f"fa needs torch.nn.attention.varlen (torch 2.10 or later); this is torch {torch.__version__}"
    return None


def packed_key_slots(meta: ForwardMeta) -> tuple[torch.Tensor, torch.Tensor]:
    """(cumulative key offsets int32 [B+1], pool slot of every key int64 [num_keys]), request
    by request in position order, computed on the device without waiting for it."""
    device = meta.seq_lens.device
    cu_keys = F.pad(meta.seq_lens.cumsum(0), (1, 0))  # int64
    key = torch.arange(meta.num_keys, device=device)
    owner = torch.searchsorted(cu_keys[1:], key, right=True)
    slots = meta.page_table[owner, key - cu_keys[owner]].long()
    return cu_keys.to(torch.int32), slots


def varlen_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
    """q [T, H, D] (unit last stride), caches [slots, KVH, D]; returns [T, H, D]. The seam's
    call for both phases (kernels/select.py)."""
    batch = meta.seq_lens.shape[0]
    if meta.is_decode:
        cu_queries = torch.arange(batch + 1, dtype=torch.int32, device=q.device)
        max_queries = 1
    else:
        cu_queries = F.pad(meta.extend_lens.cumsum(0, dtype=torch.int32), (1, 0))
        max_queries = meta.max_extend_len
    cu_keys, slots = packed_key_slots(meta)
    k = k_cache.index_select(0, slots)
    v = v_cache.index_select(0, slots)
    return _varlen()(q, k, v, cu_queries, cu_keys, max_queries, meta.max_seq_len, scale=1.0 / math.sqrt(q.shape[-1]))
