"""One step's ForwardBatch, assembled from the requests the scheduler picked and how many
of their tokens each runs.

A request whose tokens reach its end is sampled; a request with drafts (speculative.py)
runs its last token and the drafts, and is sampled at every one of those positions. A pooling
request (an embedding) is never sampled: its chunk's positions (mean), or its prompt's last
position (last), are a span whose final hidden states the runner sums. Under overlap scheduling a decoding
request's input token may be a "future": its row in the launched, unprocessed step's
device-side next_tokens, copied into input_ids on the device, so the CPU never waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .batch import ForwardBatch, ForwardResult, ImageSlice, SamplingBatch, to_device
from .kv import KVManager
from .request import Req


@dataclass
class ScheduledBatch:
    batch: ForwardBatch
    reqs: list[Req]  # in batch order
    sampled: list[Req]  # rows of the sampling batch, in order
    result: ForwardResult | None = None  # set once the runner has launched it
    decode_only: bool = False  # every request runs its next token (and its drafts), no prefill
    drafted: bool = False  # some request runs drafts
    # pooling requests, one per batch.pool_spans entry: (request, its first chunk, its last chunk)
    pooled: list[tuple[Req, bool, bool]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


def build_step(items: list[tuple[Req, int]], previous: ScheduledBatch | None, kv: KVManager,
               sampling: Callable[[list[Req]], SamplingBatch]) -> ScheduledBatch:
    """`items`: (request, tokens it runs) in batch order."""
    input_ids: list[int] = []
    future_at: list[int] = []  # positions in T whose token is a future of `previous`
    future_rows: list[int] = []
    positions: list[int] = []
    out_slots: list[int] = []
    extend_lens, prefix_lens, sample_indices = [], [], []
    sampled: list[Req] = []
    pool_spans: list[tuple[int, int]] = []
    pooled: list[tuple[Req, bool, bool]] = []
    decode_only = all(n == 1 + len(r.draft) and r.kv_len + n == len(r.all_ids) + r.inflight + len(r.draft)
                      for r, n in items)
    images: list[ImageSlice] = []
    for req, n in items:
        start = req.kv_len
        if req.images:
            images.extend(_image_slices(req, start, n, len(input_ids)))
        if start == len(req.all_ids):  # a decode of the token `previous` samples
            future_at.append(len(input_ids))
            future_rows.append(req.future_row)
            input_ids.append(0)
        elif n == 1:
            input_ids.append(req.all_ids[start])
        elif req.draft:  # its last token and the drafts, every position sampled
            sample_indices.extend(range(len(input_ids), len(input_ids) + n - 1))
            sampled.extend([req] * (n - 1))
            input_ids.append(req.all_ids[start])
            input_ids.extend(req.draft)
        else:
            input_ids.extend(req.all_ids[start : start + n])
        if n == 1:
            positions.append(start)
            out_slots.append(req.slots[start])
        else:
            positions.extend(range(start, start + n))
            out_slots.extend(req.slots[start : start + n])
        extend_lens.append(n)
        prefix_lens.append(start)
        if req.pooling is not None:
            last = start + n == len(req.all_ids)
            if req.pooling == "mean":  # every chunk adds its positions to the sum
                pool_spans.append((len(input_ids) - n, len(input_ids)))
                pooled.append((req, start == 0, last))
            elif last:  # the prompt's last position is the whole answer
                pool_spans.append((len(input_ids) - 1, len(input_ids)))
                pooled.append((req, True, True))
        elif start + n == len(req.all_ids) + req.inflight + len(req.draft):
            sample_indices.append(len(input_ids) - 1)
            sampled.append(req)
    device = kv.device
    reqs = [r for r, _ in items]
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    ids = to_device(input_ids, device)
    if future_at:
        if previous is None or previous.result is None:
            raise AssertionError("a decode row needs the token of a step that was not launched")
        # resolved on the device, in stream order after `previous`: the CPU never waits
        future = previous.result.future_tokens.to(device).index_select(0, to_device(future_rows, device))
        ids.index_copy_(0, to_device(future_at, device), future)
    batch = ForwardBatch(
        input_ids=ids,
        positions=to_device(positions, device),
        out_slots=to_device(out_slots, device),
        page_table=kv.table_rows(reqs, max(seq_lens)),
        extend_lens=extend_lens,
        prefix_lens=prefix_lens,
        sample_indices=to_device(sample_indices, device),
        sampling=sampling(sampled) if sampled else None,
        seq_lens=seq_lens,
        images=images,
        pool_spans=pool_spans,
    )
    for req, n in items:
        req.kv_len += n
    for i, req in enumerate(sampled):
        req.inflight += 1
        req.future_row = i  # (a drafted request's rows are read back before it runs again)
    return ScheduledBatch(batch, reqs, sampled, decode_only=decode_only, drafted=any(r.draft for r in reqs),
                          pooled=pooled)


def _image_slices(req: Req, start: int, n: int, token_offset: int) -> list[ImageSlice]:
    """The image positions among `req`'s tokens [start, start + n), which sit in the batch
    from `token_offset` on."""
    out = []
    end = start + n
    for image in req.images:
        row = 0
        for pos, length in image.runs:
            lo, hi = max(pos, start), min(pos + length, end)
            if lo < hi:
                out.append(ImageSlice(token_offset + lo - start, image, row + lo - pos, hi - lo))
            row += length
    return out
