"""How one ragged ForwardBatch becomes padded [G, L] model calls for mlx-lm.

mlx-lm's models take a rectangular batch of tokens and one rotary offset per row (what
their batched KV cache uses), so each request's new tokens become one row, right-padded to
the longest row of its call. Three rules shape the calls ("sub-steps") of a step:

- a request's new tokens are cut into pieces of at most MLX_PREFILL_STEP_SIZE tokens (the
  chunk size mlx-lm uses for long prompts: it bounds activation memory), and its pieces run
  in order, each reading the K/V its predecessors wrote into the pool;
- a call holds at most MLX_PREFILL_STEP_SIZE tokens, padding included;
- padding stays under a quarter of a call, so a long prefill never makes the decodes that
  share its step compute hundreds of padded positions (it gets its own call instead).

Everything here is host-side numpy; the runner turns a plan into mlx arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minisgl.engine.batch import ForwardBatch

# a call may be at most this share padding before a piece goes to the next call
MAX_PADDING_SHARE = 0.25


@dataclass(frozen=True)
class Piece:
    row: int  # request index in the batch
    start: int  # first token of the piece in the flattened batch
    length: int  # new tokens in the piece
    prefix: int  # tokens of the request already in the pool before the piece
    order: int  # 0 for a request's first piece, 1 for its second, ...


@dataclass
class SubStep:
    """One padded model call: G rows of up to L new tokens, each attending over up to S slots."""

    tokens: np.ndarray  # int32 [G, L]
    offsets: np.ndarray  # int32 [G]: position of each row's first token (rotary offset)
    write_slots: np.ndarray  # int64 [G * L]: pool slot per padded position (scratch for padding)
    context_slots: np.ndarray  # int64 [G, S]: page-table rows, prefix + new tokens
    sampled_positions: np.ndarray  # int64 [k]: flat padded positions (g * L + j) that are sampled
    sampled_order: np.ndarray  # int64 [k]: where each goes among the batch's sampled rows


def split_into_pieces(batch: ForwardBatch, max_tokens: int) -> list[Piece]:
    pieces: list[Piece] = []
    start = 0
    for row, (extend, prefix) in enumerate(zip(batch.extend_lens, batch.prefix_lens)):
        for order, offset in enumerate(range(0, extend, max_tokens)):
            pieces.append(Piece(row, start + offset, min(max_tokens, extend - offset), prefix + offset, order))
        start += extend
    return pieces


def group_pieces(pieces: list[Piece], max_tokens: int) -> list[list[Piece]]:
    """Greedy packing of pieces into calls. Sorting by (order, length) keeps every request's
    pieces in order across calls and puts pieces of similar length together."""
    groups: list[list[Piece]] = []
    current: list[Piece] = []
    width = real = 0
    for piece in sorted(pieces, key=lambda p: (p.order, p.length, p.row)):
        new_width = max(width, piece.length)
        padded = new_width * (len(current) + 1)
        new_real = real + piece.length
        fits = padded <= max_tokens and (padded - new_real) <= MAX_PADDING_SHARE * padded
        if current and (not fits or piece.order != current[-1].order):
            groups.append(current)
            current, new_width, new_real = [], piece.length, piece.length
        current.append(piece)
        width, real = new_width, new_real
    if current:
        groups.append(current)
    return groups


def build_substep(
    group: list[Piece],
    input_ids: np.ndarray,
    out_slots: np.ndarray,
    page_table: np.ndarray,
    sampled_at: dict[int, int],
    scratch_slot: int,
) -> SubStep:
    """`sampled_at` maps a flattened token index to its row among the batch's sampled rows."""
    rows, width = len(group), max(p.length for p in group)
    context = max(p.prefix + p.length for p in group)
    tokens = np.zeros((rows, width), dtype=np.int32)
    write_slots = np.full((rows, width), scratch_slot, dtype=np.int64)
    context_slots = np.zeros((rows, context), dtype=np.int64)
    offsets = np.empty(rows, dtype=np.int32)
    positions: list[int] = []
    order: list[int] = []
    for g, p in enumerate(group):
        end = p.start + p.length
        tokens[g, : p.length] = input_ids[p.start : end]
        write_slots[g, : p.length] = out_slots[p.start : end]
        seen = p.prefix + p.length
        context_slots[g, :seen] = page_table[p.row, :seen]
        offsets[g] = p.prefix
        for t in range(p.start, end):
            if t in sampled_at:
                positions.append(g * width + (t - p.start))
                order.append(sampled_at[t])
    return SubStep(
        tokens=tokens,
        offsets=offsets,
        write_slots=write_slots.reshape(-1),
        context_slots=context_slots,
        sampled_positions=np.asarray(positions, dtype=np.int64),
        sampled_order=np.asarray(order, dtype=np.int64),
    )


def plan_step(batch: ForwardBatch, max_tokens: int, scratch_slot: int) -> list[SubStep]:
    """The model calls that carry out `batch`, in the order they must run."""
    input_ids = batch.input_ids.numpy()
    out_slots = batch.out_slots.numpy()
    page_table = batch.page_table.numpy()
    sampled_at = {int(t): i for i, t in enumerate(batch.sample_indices.tolist())} if batch.sampling is not None else {}
    groups = group_pieces(split_into_pieces(batch, max_tokens), max_tokens)
    return [build_substep(g, input_ids, out_slots, page_table, sampled_at, scratch_slot) for g in groups]
