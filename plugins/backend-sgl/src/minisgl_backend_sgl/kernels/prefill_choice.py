"""`--attention-backend auto`'s prefill attention, by measurement at start.

Which prefill kernel is faster depends on the card, the heads and how many keys a step's
queries read: on one H100 FlashAttention led our first Triton kernel 1.6x on an 8k chunk
after a 24k prefix and trailed it 2-3x on 2k prompts; with the kernel's present tiles the
two tie at 32k (BENCHMARKS.md, seventh session). So both are timed on the model's heads at
a few key counts, and a step goes to FlashAttention from the shortest key count after which
it won every measurement.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from ..forward_meta import ForwardMeta

logger = logging.getLogger(__name__)


def prefill_meta(batch: int, new: int, prefix: int, device: torch.device) -> ForwardMeta:
    """`batch` requests of `new` tokens after `prefix` cached ones, each in its own slot range."""
    length = prefix + new
    i32 = lambda value: torch.full((batch,), value, dtype=torch.int32, device=device)  # noqa: E731
    slots = torch.arange(batch * length, device=device).view(batch, length)
    return ForwardMeta(
        is_decode=False, positions=slots[:, prefix:].flatten(), out_slots=slots[:, prefix:].flatten(),
        page_table=slots.int(), seq_lens=i32(length), qo_start=torch.arange(batch, dtype=torch.int32, device=device) * new,
        extend_lens=i32(new), prefix_lens=i32(prefix), max_extend_len=new, max_seq_len=length, num_keys=batch * length,
    )


def _seconds(extend: Callable[..., torch.Tensor], q: torch.Tensor, kv: torch.Tensor, meta: ForwardMeta) -> float:
    """Best of three (after one that compiles)."""
    best = float("inf")
    for _ in range(4):
        torch.cuda.synchronize(q.device)
        start = time.perf_counter()
        extend(q, kv, kv, meta)
        torch.cuda.synchronize(q.device)
        best = min(best, time.perf_counter() - start)
    return best


def _by_key_count(short: Callable[..., torch.Tensor], long: Callable[..., torch.Tensor], threshold: int) -> Callable[..., torch.Tensor]:
    def extend_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        return (long if meta.max_seq_len >= threshold else short)(q, k_cache, v_cache, meta)
    return extend_attention


def fa_threshold(keys: list[int], fa: list[float], triton: list[float]) -> int | None:
    """The shortest of `keys` (ascending) from which fa took less time at every longer one; None
    where triton won at the longest."""
    fa_wins = [f < t for f, t in zip(fa, triton, strict=True)]
    return next((keys[i] for i in range(len(keys)) if all(fa_wins[i:])), None)


def measured(kernels: dict[str, Callable[..., torch.Tensor]], heads: tuple[int, int, int], tokens: int,
             device: torch.device, dtype: torch.dtype) -> tuple[str, Callable[..., torch.Tensor]]:
    """`auto`'s prefill attention: triton and fa timed on prompts of 512 tokens and on a chunk of
    `tokens` after 0, 1 and 3 chunks of cached prefix. fa serves steps from the shortest key
    count after which it is faster at every longer one, triton the steps below."""
    num_heads, num_kv_heads, head_dim = heads
    tokens = min(16384, max(512, tokens // 512 * 512))
    q = torch.randn(tokens, num_heads, head_dim, device=device, dtype=dtype)
    kv = torch.randn(4 * tokens, num_kv_heads, head_dim, device=device, dtype=dtype)
    shapes = [(tokens // 512, 512, 0), (1, tokens, 0), (1, tokens, tokens), (1, tokens, 3 * tokens)]
    metas = [prefill_meta(*shape, device) for shape in shapes]
    seconds = {name: [_seconds(extend, q, kv, meta) for meta in metas] for name, extend in kernels.items()}
    del q, kv
    torch.cuda.empty_cache()  # the KV pool is sized from the free memory next
    keys = [meta.max_seq_len for meta in metas]
    threshold = fa_threshold(keys, seconds["fa"], seconds["triton"])
    if threshold is None:
        name, extend = "triton", kernels["triton"]
    elif threshold == keys[0]:
        name, extend = "fa", kernels["fa"]
    else:
        name, extend = f"triton, fa from {threshold} keys", _by_key_count(kernels["triton"], kernels["fa"], threshold)
    timings = "; ".join(f"{b} x {n} new after {p}: " + ", ".join(f"{k} {s[i] * 1e3:.2f} ms" for k, s in seconds.items())
                        for i, (b, n, p) in enumerate(shapes))
    logger.info("--attention-backend auto: prefill attention %s; prefill runs %s", timings, name)
    return name, extend
