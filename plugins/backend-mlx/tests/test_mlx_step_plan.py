"""How a ragged batch becomes padded model calls (step_plan.py)."""

from __future__ import annotations

import pytest

from minisgl_backend_mlx.probe import INSTALL_HINT as MLX_MISSING

pytest.importorskip("mlx.core", reason=MLX_MISSING)

from mlx_harness import Request, SlotAllocator, make_batch

from minisgl_backend_mlx.step_plan import plan_step

SCRATCH = 10_000


def _batch(lengths: list[int], prefixes: list[int] | None = None):
    alloc = SlotAllocator(4096)
    reqs = [Request(slots=alloc.take(p)) for p in (prefixes or [0] * len(lengths))]
    return make_batch(alloc, [(r, list(range(1, n + 1))) for r, n in zip(reqs, lengths)])


def test_decodes_are_not_padded_to_a_prefill_length():
    subs = plan_step(_batch([1] * 8 + [300], prefixes=[20] * 8 + [0]), max_tokens=2048, scratch_slot=SCRATCH)
    assert sorted(s.tokens.shape for s in subs) == [(1, 300), (8, 1)]


def test_similar_prefills_share_a_call():
    (sub,) = plan_step(_batch([30, 33, 36]), max_tokens=2048, scratch_slot=SCRATCH)
    assert sub.tokens.shape == (3, 36)
    assert (sub.write_slots == SCRATCH).sum() == 3 * 36 - (30 + 33 + 36)


def test_no_call_exceeds_the_step_size_and_pieces_run_in_order():
    batch = _batch([100, 7, 40])
    subs = plan_step(batch, max_tokens=32, scratch_slot=SCRATCH)
    assert all(s.tokens.size <= 32 for s in subs)
    written = [slot for s in subs for slot in s.write_slots.tolist() if slot != SCRATCH]
    assert sorted(written) == sorted(batch.out_slots.tolist())
    # the long prompt's pieces start at 0, 32, 64, 96, in that order
    starts = [int(s.offsets[0]) for s in subs if s.tokens.shape[0] == 1 and int(s.offsets[0]) % 32 == 0]
    assert starts == sorted(starts)


def test_sampled_rows_keep_the_batch_order():
    batch = _batch([1, 50, 1, 9])
    subs = plan_step(batch, max_tokens=2048, scratch_slot=SCRATCH)
    order = sorted(i for s in subs for i in s.sampled_order.tolist())
    assert order == [0, 1, 2, 3]
    for s in subs:
        for pos, i in zip(s.sampled_positions.tolist(), s.sampled_order.tolist()):
            want = int(batch.input_ids[int(batch.sample_indices[i])])
            assert int(s.tokens.reshape(-1)[pos]) == want
