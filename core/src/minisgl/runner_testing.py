"""Drive a ModelRunner the way the scheduler does, for backend authors' tests: a slot
allocator that hands out slots in scrambled order (so page-table rows are really paged),
requests that own their slots, and ForwardBatch objects built from (request, new tokens)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .engine.batch import ForwardBatch, SamplingBatch


class SlotAllocator:
    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.free = torch.randperm(capacity, generator=torch.Generator().manual_seed(seed)).tolist()

    def take(self, n: int) -> list[int]:
        if n > len(self.free):
            raise RuntimeError("test pool exhausted")
        taken, self.free = self.free[:n], self.free[n:]
        return taken


@dataclass
class Request:
    slots: list[int] = field(default_factory=list)  # slot of each position so far

    @property
    def length(self) -> int:
        return len(self.slots)


def greedy_sampling(rows: int) -> SamplingBatch:
    def fill(value: float, dtype: torch.dtype) -> torch.Tensor:
        return torch.full((rows,), value, dtype=dtype)

    f32, i64 = torch.float32, torch.long
    return SamplingBatch(
        temperature=fill(0, f32),
        top_p=fill(1, f32),
        top_k=fill(0, i64),
        min_p=fill(0, f32),
        repetition_penalty=fill(1, f32),
        frequency_penalty=fill(0, f32),
        presence_penalty=fill(0, f32),
        seeds=fill(-1, i64),
        steps=fill(0, i64),
    )


def make_batch(
    alloc: SlotAllocator,
    parts: list[tuple[Request, list[int]]],
    sample: list[bool] | None = None,
    every_row: bool = False,
) -> ForwardBatch:
    """One step: each request gets its new tokens (slots allocated here). By default the last
    token of every request is sampled; `sample[i] = False` makes request i a mid-prompt chunk;
    `every_row` samples every new token (to compare whole logit matrices)."""
    sample = sample if sample is not None else [True] * len(parts)
    ids: list[int] = []
    positions: list[int] = []
    out_slots: list[int] = []
    sample_idx: list[int] = []
    prefix_lens, extend_lens = [], []
    for (req, tokens), sampled in zip(parts, sample):
        prefix = req.length
        new = alloc.take(len(tokens))
        req.slots.extend(new)
        first = len(ids)
        ids += tokens
        positions += range(prefix, prefix + len(tokens))
        out_slots += new
        if every_row:
            sample_idx += range(first, len(ids))
        elif sampled:
            sample_idx.append(len(ids) - 1)
        prefix_lens.append(prefix)
        extend_lens.append(len(tokens))
    width = max(req.length for req, _ in parts)
    table = torch.zeros(len(parts), width, dtype=torch.long)
    for row, (req, _) in enumerate(parts):
        table[row, : req.length] = torch.tensor(req.slots)
    return ForwardBatch(
        input_ids=torch.tensor(ids),
        positions=torch.tensor(positions),
        out_slots=torch.tensor(out_slots),
        page_table=table,
        extend_lens=extend_lens,
        prefix_lens=prefix_lens,
        sample_indices=torch.tensor(sample_idx, dtype=torch.long),
        sampling=greedy_sampling(len(sample_idx)) if sample_idx else None,
    )
