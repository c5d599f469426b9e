"""Per-step attention metadata: the ForwardBatch's index math, moved to the device in one copy.

A batch's tokens are flattened request by request; request b's new tokens occupy
[qo_start[b], qo_start[b] + extend_lens[b]) of the flattened dimension and sit at sequence
positions [prefix_lens[b], seq_lens[b]). The small per-request integers are packed into one
host tensor and sent with a single copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minisgl.engine.batch import ForwardBatch

MAX_DECODE_SPLITS = 16


def decode_splits(batch_size: int, num_kv_heads: int, num_sms: int) -> int:
    """Key-range splits per request in decode attention: enough programs (batch x KV heads x
    splits) to fill the GPU about four times, at most 16 (gpu/tune_decode.py; BENCHMARKS.md).
    Depends on the batch shape only, so a CUDA graph captured for a batch
    size stays valid at every length."""
    return max(1, min(MAX_DECODE_SPLITS, -(-4 * num_sms // max(batch_size * num_kv_heads, 1))))


@dataclass
class ForwardMeta:
    is_decode: bool
    positions: torch.Tensor  # int64 [T]
    out_slots: torch.Tensor  # int64 [T]
    page_table: torch.Tensor  # int32/int64 [B, >= max seq_len]
    seq_lens: torch.Tensor  # int32 [B]
    qo_start: torch.Tensor | None = None  # int32 [B] (extend only)
    extend_lens: torch.Tensor | None = None  # int32 [B] (extend only)
    prefix_lens: torch.Tensor | None = None  # int32 [B] (extend only)
    max_extend_len: int = 1
    decode_splits: int = 1
    # host copies for kernels that size their work on the host (`fa`); 0 in a CUDA graph's meta
    max_seq_len: int = 0
    num_keys: int = 0  # sum of seq_lens


def query_starts(extend_lens: list[int]) -> list[int]:
    """Exclusive prefix sum: where each request's new tokens start in the flattened batch."""
    starts, total = [], 0
    for n in extend_lens:
        starts.append(total)
        total += n
    return starts


def validate_batch(batch: ForwardBatch) -> None:
    """Cheap host-side checks of the seam's invariants, with messages that name the field."""
    n = batch.batch_size
    if len(batch.prefix_lens) != n or len(batch.seq_lens) != n:
        raise ValueError(f"ForwardBatch: extend_lens has {n} entries, prefix_lens {len(batch.prefix_lens)}, seq_lens {len(batch.seq_lens)}")
    if sum(batch.extend_lens) != batch.num_tokens:
        raise ValueError(f"ForwardBatch: sum(extend_lens)={sum(batch.extend_lens)} but input_ids has {batch.num_tokens} tokens")
    if batch.positions.shape[0] != batch.num_tokens or batch.out_slots.shape[0] != batch.num_tokens:
        raise ValueError("ForwardBatch: positions and out_slots must have one entry per token of input_ids")
    if batch.page_table.shape[0] != n or (n and batch.page_table.shape[1] < max(batch.seq_lens)):
        raise ValueError(f"ForwardBatch: page_table {tuple(batch.page_table.shape)} must be [{n}, >= max(seq_lens)={max(batch.seq_lens, default=0)}]")
    for p, e, s in zip(batch.prefix_lens, batch.extend_lens, batch.seq_lens, strict=False):
        if p + e != s or e < 0 or p < 0:
            raise ValueError(f"ForwardBatch: prefix_len {p} + extend_len {e} != seq_len {s}")


def build_meta(batch: ForwardBatch, device: torch.device, decode_splits: int = 1) -> ForwardMeta:
    """Device-side metadata for one step (eager path; the CUDA-graph path fills static buffers)."""
    n = batch.batch_size
    is_decode = batch.is_decode
    rows = [batch.seq_lens] if is_decode else [batch.seq_lens, query_starts(batch.extend_lens), batch.extend_lens, batch.prefix_lens]
    packed = torch.tensor(rows, dtype=torch.int32)
    if device.type == "cuda":
        packed = packed.pin_memory()
    packed = packed.to(device, non_blocking=True)
    meta = ForwardMeta(
        is_decode=is_decode,
        positions=batch.positions.to(device, non_blocking=True),
        out_slots=batch.out_slots.to(device, non_blocking=True),
        page_table=batch.page_table.to(device, non_blocking=True),
        seq_lens=packed[0],
        max_extend_len=max(batch.extend_lens, default=0),
        decode_splits=decode_splits,
        max_seq_len=max(batch.seq_lens, default=0),
        num_keys=sum(batch.seq_lens),
    )
    if not is_decode:
        meta.qo_start, meta.extend_lens, meta.prefix_lens = packed[1], packed[2], packed[3]
    assert meta.seq_lens.shape[0] == n
    return meta
