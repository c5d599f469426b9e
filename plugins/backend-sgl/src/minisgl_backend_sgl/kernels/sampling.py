"""The sampler's passes over the whole vocabulary, in Triton: the grammar bitmask, and the
draw (bitmask, temperature and Gumbel-max noise in one pass).

They replace the torch code of minisgl.engine.sampler (`bitmask_logits`, `gumbel_argmax`)
with the same results: a seeded row's noise is the same counter-based hash of (seed, step,
token id), computed in registers instead of some twenty int64 passes over [rows, vocab]
tensors (a visible share of a small model's GPU step, BENCHMARKS.md, and as many launches).
Unseeded rows hash a salt drawn from torch's generator on the host each call, so they need
no per-row state either. The draw reads the logits in their own dtype and the grammar's
bitmask as it is, so a step without top-k, top-p or min-p samples in one launch.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from minisgl.engine.batch import SamplingBatch

_BLOCK = 1024


@triton.jit
def _mix64(x):
    """splitmix64's finaliser on uint64 (the multiplications wrap)."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit
def _gumbel_argmax_kernel(
    x_ptr, stride_x, words_ptr, stride_w, temp_ptr, seeds_ptr, steps_ptr, salt, vals_ptr, idx_ptr,
    n_cols, cols_per_split, n_splits,
    HAS_WORDS: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    temperature = tl.load(temp_ptr + row)
    drawn = temperature > 0  # temperature 0: the plain argmax
    seed = tl.load(seeds_ptr + row)
    step = tl.load(steps_ptr + row)
    seeded = seed >= 0
    seed = tl.where(seeded, seed, salt + row).to(tl.uint64, bitcast=True)
    step = tl.where(seeded, step, 0).to(tl.uint64, bitcast=True)
    key = _mix64(_mix64(seed + 0x9E3779B97F4A7C15) ^ (step * 0x94D049BB133111EB))
    lo = split * cols_per_split
    hi = tl.minimum(lo + cols_per_split, n_cols)
    best_v = -float("inf")
    best_i = lo
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < hi
        x = tl.load(x_ptr + row.to(tl.int64) * stride_x + cols, mask=inside, other=-float("inf")).to(tl.float32)
        if HAS_WORDS:
            word = tl.load(words_ptr + row.to(tl.int64) * stride_w + cols // 32, mask=inside, other=0)
            inside = inside & (((word >> (cols % 32)) & 1) != 0)  # an arithmetic shift: bit 31 still reads 1
        bits = _mix64(key + (cols.to(tl.uint64) + 1) * 0x9E3779B97F4A7C15)
        # 23 high bits + 0.5: strictly inside (0, 1), as minisgl.engine.sampler.seeded_uniform
        u = ((bits >> 41).to(tl.float32) + 0.5) * (1.0 / 8388608.0)
        # IEEE division, as torch's: the approximate one could move a near-tie
        noisy = tl.math.div_rn(x, tl.where(drawn, temperature, 1.0)) - tl.log(-tl.log(u))
        v = tl.where(inside, tl.where(drawn, noisy, x), -float("inf"))
        m = tl.max(v, axis=0)
        i = tl.argmax(v, axis=0)
        take = m > best_v  # strictly: the first maximum wins, as torch.argmax
        best_i = tl.where(take, start + i, best_i)
        best_v = tl.where(take, m, best_v)
    tl.store(vals_ptr + row * n_splits + split, best_v)
    tl.store(idx_ptr + row * n_splits + split, best_i)


@functools.cache
def _programs_wanted(device: torch.device) -> int:
    """Enough programs to fill the GPU a few times over (one per row is 64 of 132 SMs)."""
    if device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def gumbel_argmax(x: torch.Tensor, words: torch.Tensor | None, temperature: torch.Tensor,
                  sampling: SamplingBatch) -> torch.Tensor:
    """Per row of `x` [S, V], the argmax of x / temperature plus Gumbel noise over the tokens
    the bitmask `words` allows (all without one); temperature-0 rows take the plain argmax.
    int64 [S] token ids."""
    rows, vocab = x.shape
    x = x.contiguous()
    blocks = triton.cdiv(vocab, _BLOCK)
    splits = max(1, min(blocks, _programs_wanted(x.device) // max(rows, 1)))
    cols_per_split = triton.cdiv(blocks, splits) * _BLOCK
    splits = triton.cdiv(vocab, cols_per_split)
    vals = torch.empty(rows, splits, device=x.device, dtype=torch.float32)
    idx = torch.empty(rows, splits, device=x.device, dtype=torch.int32)
    salt = int(torch.randint(0, 1 << 62, ()).item())  # torch's CPU generator: no device sync
    has_words = words is not None
    words = words.contiguous() if has_words else idx  # without a mask: a pointer the kernel never reads
    _gumbel_argmax_kernel[(rows, splits)](
        x, x.stride(0), words, words.stride(0), temperature.to(x.device, torch.float32),
        sampling.seeds.to(x.device, torch.int64), sampling.steps.to(x.device, torch.int64), salt, vals, idx,
        vocab, cols_per_split, splits, HAS_WORDS=has_words, BLOCK=_BLOCK, num_warps=4,
    )
    if splits == 1:
        return idx[:, 0].long()
    return idx.gather(1, vals.argmax(dim=1, keepdim=True)).squeeze(1).long()


@triton.jit
def _bitmask_kernel(x_ptr, stride_x, words_ptr, stride_w, out_ptr, n_cols, n_words, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=inside)
    word = tl.load(words_ptr + row * stride_w + cols // 32, mask=inside & (cols // 32 < n_words), other=0)
    allowed = ((word >> (cols % 32)) & 1) != 0  # an arithmetic shift: bit 31 still reads 1
    tl.store(out_ptr + row * n_cols + cols, tl.where(allowed, x, -float("inf")), mask=inside)


def bitmask_logits(logits: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """`logits` [S, V] with -inf where the int32 bitmask `words` [S, ceil(V / 32)] has the
    token's bit clear (a new tensor: the raw logits stay for logprobs)."""
    rows, vocab = logits.shape
    out = torch.empty((rows, vocab), device=logits.device, dtype=logits.dtype)
    if rows == 0:
        return out
    logits, words = logits.contiguous(), words.contiguous()
    _bitmask_kernel[(rows, triton.cdiv(vocab, _BLOCK))](
        logits, logits.stride(0), words, words.stride(0), out, vocab, words.shape[1], BLOCK=_BLOCK, num_warps=4,
    )
    return out
