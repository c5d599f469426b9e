"""Hand-built ForwardBatches for tests: requests with slots scattered over a pool."""

from __future__ import annotations

import torch

from minisgl.engine.batch import ForwardBatch, SamplingBatch


def greedy_sampling(rows: int, device: torch.device | str = "cpu") -> SamplingBatch:
    f = lambda v: torch.full((rows,), v, dtype=torch.float32, device=device)  # noqa: E731
    i = lambda v: torch.full((rows,), v, dtype=torch.int64, device=device)  # noqa: E731
    return SamplingBatch(temperature=f(0.0), top_p=f(1.0), top_k=i(0), min_p=f(0.0), repetition_penalty=f(1.0),
                         frequency_penalty=f(0.0), presence_penalty=f(0.0), seeds=i(-1), steps=i(0))


class SlotPlanner:
    """Gives each request a scattered set of pool slots (a random permutation), so kernels
    that ignore the page table and read contiguous memory would fail."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.free = torch.randperm(capacity, generator=gen).tolist()
        self.slots: dict[int, list[int]] = {}

    def extend(self, rid: int, n: int) -> list[int]:
        new = [self.free.pop() for _ in range(n)]
        self.slots.setdefault(rid, []).extend(new)
        return new


def make_batch(planner: SlotPlanner, requests: list[tuple[int, list[int]]], device: torch.device | str = "cpu",
               sample_all_rows: bool = False) -> ForwardBatch:
    """requests: (request id, new token ids). Samples the last new token of each request
    (every token when sample_all_rows)."""
    ids, positions, out_slots, extend_lens, prefix_lens, sample = [], [], [], [], [], []
    for rid, tokens in requests:
        prefix = len(planner.slots.get(rid, []))
        out_slots += planner.extend(rid, len(tokens))
        ids += tokens
        positions += list(range(prefix, prefix + len(tokens)))
        extend_lens.append(len(tokens))
        prefix_lens.append(prefix)
        sample += list(range(len(ids) - len(tokens), len(ids))) if sample_all_rows else [len(ids) - 1]
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens, strict=False)]
    table = torch.zeros(len(requests), max(seq_lens), dtype=torch.int64)
    for row, (rid, _) in enumerate(requests):
        table[row, : seq_lens[row]] = torch.tensor(planner.slots[rid])
    t = lambda x: torch.tensor(x, dtype=torch.int64, device=device)  # noqa: E731
    return ForwardBatch(input_ids=t(ids), positions=t(positions), out_slots=t(out_slots), page_table=table.to(device),
                        extend_lens=extend_lens, prefix_lens=prefix_lens, sample_indices=t(sample),
                        sampling=greedy_sampling(len(sample), device), seq_lens=seq_lens)
