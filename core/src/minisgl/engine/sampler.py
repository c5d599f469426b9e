"""Sampling on the device: one vectorised pass over the S sampled rows of a step.

`sample(logits, sampling)` turns the logits of the rows a runner sampled into next tokens,
each row with its own parameters (a batch mixes greedy and sampled requests).

Order of processing, the same as transformers' and vLLM's:
1. penalties from `history` (the engine passes prompt + generated ids): repetition
   (HF style: divide positive logits, multiply negative ones), then frequency (minus
   penalty x count) and presence (minus penalty if seen);
2. logit_bias (OpenAI's): each row's biases added to their tokens' logits;
3. min_new_tokens: rows still under their minimum get -inf on `stop_token_ids` (the engine
   puts the EOS ids there unless the request ignores EOS); structured outputs: tokens their
   grammar does not allow get -inf (the engine's bitmask, filled on the host);
4. temperature-0 rows (the engine gives top_k == 1 rows temperature 0 too) take the argmax
   of the processed logits;
5. the other rows: divide by temperature, keep top-k, top-p (nucleus, at least one token)
   and min-p (prob >= min_p x max prob), then draw with the Gumbel-max trick.

Without top-k, top-p or min-p in the batch, steps 3 (the bitmask) to 5 are one pass over the
vocabulary, `draw`, which a backend may replace with a fused kernel: its host launches are
what a small model's decode step waits on.

Reproducible seeds: a seeded row's noise is a counter-based hash of (seed, step, token id)
(splitmix64 in int64 torch ops), so the same (seed, step) gives the same draw whatever the
batch around it, on any device, with no per-row generator state. Unseeded rows use torch's
global generator.

Logprobs are those of the raw model distribution (log_softmax of the logits as the model
produced them, before penalties, biases, masks and temperature), which is what OpenAI and vLLM
(its default "raw_logprobs" mode) return.

The all_greedy fast path, with no penalties, masks or logprobs, is a plain argmax.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .batch import ForwardResult, SamplingBatch

BitmaskKernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# draw(x, words, temperature, sampling) -> int64 [S] token ids
DrawKernel = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor, SamplingBatch], torch.Tensor]

# splitmix64 constants as signed int64 (torch has no uint64 arithmetic everywhere).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on negatives)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser; int64 multiplication wraps like uint64 does."""
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def seeded_uniform(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniforms in (0, 1), float32 [R, V], a pure function of (seed, step, token id)."""
    row_key = _mix64(_mix64(seeds.to(torch.int64) + _GOLDEN) ^ (steps.to(torch.int64) * _MIX2))
    token = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    bits = _mix64(row_key[:, None] + (token[None, :] + 1) * _GOLDEN)
    # 23 high bits + 0.5 fit float32's 24-bit significand: strictly inside (0, 1), never 1.0
    # (with 24 bits the largest rounds up to 1.0, whose Gumbel noise is +inf: a token drawn
    # whatever its logit, even a banned one)
    return (_shr(bits, 41).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def _gumbel(sampling: SamplingBatch, shape: torch.Size, device: torch.device) -> torch.Tensor:
    rows, vocab = shape
    u = torch.rand(rows, vocab, device=device, dtype=torch.float32).clamp_(min=1e-12, max=1.0 - 1e-7)
    seeded = sampling.seeds >= 0
    if device.type == "cpu":  # asking is free here; draw for the seeded rows alone
        idx = seeded.nonzero(as_tuple=True)[0]
        u[idx] = seeded_uniform(sampling.seeds[idx], sampling.steps[idx], vocab)
    elif bool(seeded.any()) if sampling.any_seeded is None else sampling.any_seeded:
        u = torch.where(seeded[:, None], seeded_uniform(sampling.seeds, sampling.steps, vocab), u)
    return -torch.log(-torch.log(u))


def _token_counts(history: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[S, V] float32 occurrences of each id in the padded (-1) history."""
    index = torch.where(history < 0, vocab_size, history).clamp_(max=vocab_size)
    counts = torch.zeros(history.shape[0], vocab_size + 1, device=history.device, dtype=torch.float32)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float32))
    return counts[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, sampling: SamplingBatch) -> torch.Tensor:
    if sampling.history is None:
        return logits
    counts = _token_counts(sampling.history.to(logits.device), logits.shape[1])
    seen = counts > 0
    rep = sampling.repetition_penalty[:, None]
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    logits = logits - sampling.frequency_penalty[:, None] * counts
    return logits - sampling.presence_penalty[:, None] * seen.to(logits.dtype)


def apply_logit_bias(logits: torch.Tensor, sampling: SamplingBatch) -> torch.Tensor:
    if sampling.logit_bias_ids is None or sampling.logit_bias is None:
        return logits
    vocab = logits.shape[1]
    ids = sampling.logit_bias_ids.to(logits.device)
    index = torch.where((ids < 0) | (ids >= vocab), vocab, ids)  # padding lands in a column cut off below
    bias = torch.zeros(logits.shape[0], vocab + 1, device=logits.device, dtype=torch.float32)
    bias.scatter_(1, index, sampling.logit_bias.to(logits.device))
    return logits.float() + bias[:, :vocab]


def mask_stop_tokens(logits: torch.Tensor, sampling: SamplingBatch) -> torch.Tensor:
    """Rows that have not reached min_new_tokens may not produce a stop token."""
    if sampling.min_new_tokens_mask is None or sampling.stop_token_ids is None:
        return logits
    vocab = logits.shape[1]
    ids = sampling.stop_token_ids.to(logits.device)
    index = torch.where((ids < 0) | (ids >= vocab), vocab, ids)
    banned = torch.zeros(logits.shape[0], vocab + 1, device=logits.device, dtype=torch.bool)
    banned.scatter_(1, index, True)
    banned = banned[:, :vocab] & sampling.min_new_tokens_mask.to(logits.device)[:, None]
    return logits.masked_fill(banned, float("-inf"))


def bitmask_logits(logits: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """-inf where the int32 bitmask `words` [S, ceil(V / 32)] has the token's bit clear."""
    vocab = logits.shape[1]
    bits = 1 << torch.arange(32, device=logits.device, dtype=torch.int32)  # bit 31 is int32's sign: & still works
    allowed = ((words[:, :, None] & bits) != 0).reshape(words.shape[0], -1)[:, :vocab]
    # where(), not masked_fill(~allowed): faster on CPUs (BENCHMARKS.md)
    return torch.where(allowed, logits, float("-inf"))


def vocab_mask_words(sampling: SamplingBatch, device: torch.device) -> torch.Tensor | None:
    """The step's grammar bitmask on the device, once its worker has filled it (None: no grammar)."""
    if sampling.vocab_mask is None:
        return None
    # queued behind the forward in flight instead of waiting for it (the bitmask is pinned)
    return sampling.vocab_mask.result().to(device, non_blocking=True)


def gumbel_argmax(x: torch.Tensor, words: torch.Tensor | None, temperature: torch.Tensor,
                  sampling: SamplingBatch) -> torch.Tensor:
    """The draw: per row, the argmax of x / temperature plus Gumbel noise, over the tokens the
    int32 bitmask `words` [S, ceil(V / 32)] allows (every token without one); rows at
    temperature 0 take the plain argmax."""
    x = x.float()
    if words is not None:
        x = bitmask_logits(x, words)
    greedy = temperature <= 0
    drawn = (x / torch.where(greedy, 1.0, temperature)[:, None] + _gumbel(sampling, x.shape, x.device)).argmax(dim=1)
    return torch.where(greedy, x.argmax(dim=1), drawn)


def _filters_in_use(sampling: SamplingBatch) -> tuple[bool, bool, bool]:
    """Whether top-k, top-p and min-p act on any row (from the scheduler's flags, free to ask)."""
    need_k = bool((sampling.top_k > 0).any()) if sampling.top_k_max is None else sampling.top_k_max > 0
    need_p = bool((sampling.top_p < 1.0).any()) if sampling.any_top_p is None else sampling.any_top_p
    need_min_p = bool((sampling.min_p > 0).any()) if sampling.any_min_p is None else sampling.any_min_p
    return need_k, need_p, need_min_p


def _filter(scaled: torch.Tensor, sampling: SamplingBatch) -> torch.Tensor:
    """Top-k, top-p and min-p masks on temperature-scaled logits (rows independent)."""
    vocab = scaled.shape[1]
    need_k, need_p, need_min_p = _filters_in_use(sampling)
    top_k = sampling.top_k.to(scaled.device)
    top_k = torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k)
    top_p = sampling.top_p.to(scaled.device)
    min_p = sampling.min_p.to(scaled.device)
    if need_p:
        sorted_logits, order = scaled.sort(dim=1, descending=True)
        rank = torch.arange(vocab, device=scaled.device)[None, :]
        drop = rank >= top_k[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        probs = sorted_logits.softmax(dim=1)
        # drop a token when the tokens strictly before it already reach top_p
        before = probs.cumsum(dim=1) - probs
        drop = drop | (before >= top_p[:, None])
        drop[:, 0] = False
        keep = torch.empty_like(drop).scatter_(1, order, ~drop)
        scaled = scaled.masked_fill(~keep, float("-inf"))
    elif need_k:
        kmax = int(top_k.max()) if sampling.top_k_max is None else min(sampling.top_k_max, vocab)
        kth = scaled.topk(kmax, dim=1).values.gather(1, (top_k - 1).clamp(max=kmax - 1)[:, None])
        kth = kth.masked_fill(top_k[:, None] >= vocab, float("-inf"))  # rows with top-k off
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if need_min_p:
        probs = scaled.softmax(dim=1)
        threshold = probs.max(dim=1, keepdim=True).values * min_p[:, None]
        scaled = scaled.masked_fill(probs < threshold, float("-inf"))
    return scaled


def _logprobs(logits: torch.Tensor, next_tokens: torch.Tensor, sampling: SamplingBatch, result: ForwardResult) -> None:
    logprobs = logits.float().log_softmax(dim=1)
    result.logprobs = logprobs.gather(1, next_tokens[:, None]).squeeze(1)
    if sampling.top_logprobs > 0:
        top = logprobs.topk(min(sampling.top_logprobs, logprobs.shape[1]), dim=1)
        result.top_logprob_values, result.top_logprob_ids = top.values, top.indices


def sample(logits: torch.Tensor, sampling: SamplingBatch, *, bitmask: BitmaskKernel = bitmask_logits,
           draw: DrawKernel = gumbel_argmax) -> ForwardResult:
    """Next token per row of `logits` [S, V] under each row's parameters. A backend may pass
    fused kernels for the passes over the whole vocabulary (`bitmask_logits`, `gumbel_argmax`),
    with the same results."""
    processed = logits
    if sampling.needs_penalties:
        processed = apply_penalties(logits.float(), sampling)
    processed = apply_logit_bias(processed, sampling)
    processed = mask_stop_tokens(processed, sampling)
    words = vocab_mask_words(sampling, logits.device)
    temperature = sampling.temperature.to(logits.device)
    if sampling.all_greedy and words is None:
        # torch's CPU argmax over bfloat16 is a slow path: converting first is ~4x faster
        next_tokens = (processed.float() if processed.device.type == "cpu" else processed).argmax(dim=1)
    elif sampling.all_greedy or not any(_filters_in_use(sampling)):
        next_tokens = draw(processed, words, temperature, sampling)
    else:  # top-k, top-p and min-p need the masked, scaled logits whole
        masked = (processed if words is None else bitmask(processed, words)).float()
        greedy = temperature <= 0
        scaled = _filter(masked / torch.where(greedy, 1.0, temperature)[:, None], sampling)
        next_tokens = draw(scaled, None, torch.where(greedy, 0.0, 1.0), sampling)
    result = ForwardResult(next_tokens=next_tokens)
    if sampling.want_logprobs or sampling.top_logprobs > 0:
        _logprobs(logits, next_tokens, sampling, result)
    return result
