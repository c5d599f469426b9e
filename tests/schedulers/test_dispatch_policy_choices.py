"""Each dispatch policy's choice on constructed replica states."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from minisgl.dispatch import PrefixTracker, ReplicaView, RoundRobin
from minisgl.engine.messages import EngineRequest
from minisgl.sampling_params import SamplingParams
from minisgl_schedulers.dispatch import CacheAware, FirstFree, Random


def req(token_ids: Sequence[int] = (1, 2, 3, 4), rid: str = "r") -> EngineRequest:
    return EngineRequest(rid=rid, input_ids=list(token_ids), sampling=SamplingParams())


def view(index: int, inflight: int = 0, cap: int = 0, cached: Sequence[Sequence[int]] = (), **kw) -> ReplicaView:
    tracker = PrefixTracker()
    for ids in cached:
        tracker.insert(ids)
    return ReplicaView(index=index, inflight=inflight, max_inflight=cap, _prefix_match=tracker.match_len, **kw)


# ---- rr ----------------------------------------------------------------------------------
def test_round_robin_cycles_over_offered_indexes():
    policy = RoundRobin()
    replicas = [view(0), view(2), view(5)]  # 1, 3 and 4 are excluded (dead or capped)
    assert [policy.choose(req(), replicas) for _ in range(6)] == [0, 2, 5, 0, 2, 5]


def test_round_robin_keeps_its_turn_when_the_offered_set_changes():
    policy = RoundRobin()
    assert policy.choose(req(), [view(0), view(1), view(2)]) == 0
    assert policy.choose(req(), [view(0), view(2)]) == 2  # 1 is capped: its turn goes on to 2
    assert policy.choose(req(), [view(0), view(1), view(2)]) == 0  # wraps around
    assert policy.choose(req(), [view(2), view(1), view(0)]) == 1  # order of the list is irrelevant


# ---- fsfs --------------------------------------------------------------------------------
def test_first_free_prefers_lowest_idle_replica():
    replicas = [view(2, inflight=0), view(0, inflight=3), view(1, inflight=0)]
    assert FirstFree().choose(req(), replicas) == 1


def test_first_free_without_idle_takes_lowest_index_with_a_free_slot():
    replicas = [view(0, inflight=4, cap=4), view(1, inflight=2, cap=4), view(2, inflight=1, cap=4)]
    assert FirstFree().choose(req(), replicas) == 1


def test_first_free_counts_uncapped_replicas_as_free():
    replicas = [view(3, inflight=9), view(1, inflight=50)]
    assert FirstFree().choose(req(), replicas) == 1


def test_first_free_when_all_are_full_spreads_to_the_least_inflight():
    replicas = [view(0, inflight=4, cap=4), view(1, inflight=2, cap=2), view(2, inflight=3, cap=3)]
    assert FirstFree().choose(req(), replicas) == 1


# ---- random ------------------------------------------------------------------------------
def test_random_is_seedable_and_only_picks_offered_replicas():
    replicas = [view(1), view(4), view(6)]
    first = [Random(seed=7).choose(req(), replicas) for _ in range(1)]
    a, b = Random(seed=7), Random(seed=7)
    seq_a = [a.choose(req(), replicas) for _ in range(50)]
    seq_b = [b.choose(req(), replicas) for _ in range(50)]
    assert seq_a == seq_b and seq_a[:1] == first
    assert set(seq_a) == {1, 4, 6}  # uniform over 50 draws reaches all three


# ---- cache_aware -------------------------------------------------------------------------
PROMPT = list(range(100, 120))  # 20 tokens


def test_cache_aware_routes_to_the_longest_cached_prefix():
    replicas = [view(0, cached=[PROMPT[:4]]), view(1, cached=[PROMPT[:15]]), view(2)]
    assert CacheAware().choose(req(PROMPT), replicas) == 1


def test_cache_aware_accepts_some_load_for_a_cache_hit():
    replicas = [view(0, inflight=0), view(1, inflight=5, cached=[PROMPT])]
    assert CacheAware(balance_abs_threshold=8).choose(req(PROMPT), replicas) == 1


def test_cache_aware_balance_guard_overrides_the_cache_hit():
    replicas = [view(0, inflight=1), view(1, inflight=12, cached=[PROMPT])]
    assert CacheAware(balance_abs_threshold=8, balance_rel_threshold=1.5).choose(req(PROMPT), replicas) == 0


def test_cache_aware_balance_guard_needs_the_relative_gap_too():
    # 30 vs 20 inflight: 10 apart (> 8) but 30 < 1.5 * 20, so the cache still wins.
    replicas = [view(0, inflight=20), view(1, inflight=30, cached=[PROMPT])]
    assert CacheAware(balance_abs_threshold=8, balance_rel_threshold=1.5).choose(req(PROMPT), replicas) == 1


def test_cache_aware_short_match_below_threshold_goes_to_least_loaded():
    # 3 of 20 tokens cached (15% < 30%): not worth the load; replica 0 is lighter.
    replicas = [view(0, inflight=1), view(1, inflight=2, cached=[PROMPT[:3]])]
    assert CacheAware(cache_threshold=0.3).choose(req(PROMPT), replicas) == 0


def test_cache_aware_equal_matches_tie_break_to_least_loaded_then_kv_share():
    replicas = [
        view(0, inflight=3, cached=[PROMPT]),
        view(1, inflight=1, cached=[PROMPT], kv_total_tokens=100, kv_used_tokens=90),
        view(2, inflight=1, cached=[PROMPT], kv_total_tokens=100, kv_used_tokens=10),
        view(3, inflight=0),  # idle but holds nothing
    ]
    assert CacheAware().choose(req(PROMPT), replicas) == 2


def test_cache_aware_new_prefixes_take_turns_over_tied_replicas():
    policy = CacheAware()
    replicas = [view(4), view(1)]
    picks = [policy.choose(req([i, i + 1]), replicas) for i in range(4)]
    assert picks == [1, 4, 1, 4]


def test_cache_aware_ignores_cache_of_replicas_not_offered():
    # Replica 1 (holding the prompt) is capped out, so the pool does not offer it.
    replicas = [view(0, inflight=2), view(2, inflight=1, cached=[PROMPT[:10]])]
    assert CacheAware().choose(req(PROMPT), replicas) == 2


def test_cache_aware_rejects_bad_parameters():
    with pytest.raises(ValueError, match="cache_threshold"):
        CacheAware(cache_threshold=1.5)
    with pytest.raises(ValueError, match="balance_rel_threshold"):
        CacheAware(balance_rel_threshold=0.5)
