"""Dispatch policies of the minisgl-schedulers distribution: fsfs, random, cache_aware.

Each implements `minisgl.dispatch.DispatchPolicy`: `choose(request, replicas)` gets the
replicas the pool offers (healthy and under their inflight caps, in any order, possibly
not all indexes) and returns the `index` of one of them. The views are read-only
snapshots; a policy keeps no reference to engines.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from minisgl.dispatch import ReplicaView

if TYPE_CHECKING:  # the request's type, for annotations only: importing it loads torch
    from minisgl.engine.messages import EngineRequest


def _load_key(replica: ReplicaView) -> tuple[int, float]:
    """Least loaded first: fewest requests inflight, then the smallest share of KV used."""
    kv_share = replica.kv_used_tokens / replica.kv_total_tokens if replica.kv_total_tokens > 0 else 0.0
    return replica.inflight, kv_share


class FirstFree:
    """fsfs, first slot first served: the idle replica with the lowest index; when none is
    idle, the lowest index that still has a free slot under its cap (uncapped replicas
    always do). Keeps low-index replicas busy and leaves the others cold, which suits
    pools where replicas are not equal (the first ones on the fastest devices)."""

    def choose(self, request: EngineRequest, replicas: Sequence[ReplicaView]) -> int:
        ordered = sorted(replicas, key=lambda r: r.index)
        for replica in ordered:
            if replica.inflight == 0:
                return replica.index
        for replica in ordered:
            if replica.free_slots is None or replica.free_slots > 0:
                return replica.index
        # The pool offers only replicas under their caps; should it not, spread evenly.
        return min(ordered, key=lambda r: (r.inflight, r.index)).index


class Random:
    """A uniformly random offered replica. `seed` makes the sequence reproducible."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, request: EngineRequest, replicas: Sequence[ReplicaView]) -> int:
        return self._rng.choice(list(replicas)).index


class CacheAware:
    """cache_aware: send a request where its prompt's prefix is already cached, unless that
    would overload one replica. The rule, in order (the idea of sglang's router):

    1. Balance guard. With `lo` and `hi` the fewest and most requests inflight among the
       offered replicas, the pool is imbalanced when `hi - lo > balance_abs_threshold`
       and `hi > balance_rel_threshold * lo`. Then cache affinity is ignored and the least
       loaded replica wins: one hot prefix must not pile every request onto one replica.
    2. Cache affinity. `match` = `prefix_match_len(prompt)` per replica, plus `tier_weight`
       times the tokens beyond it that its host-memory or disk tier holds
       (`tier_match_len`): those it copies back instead of recomputing, which costs more
       than a device hit and far less than a prefill (0.5: a prefix twice as long in a
       tier as on another replica's device is worth as much). When the best match covers
       at least `cache_threshold` of the prompt, the replica(s) holding it win; among
       several, the least loaded.
    3. Otherwise no replica holds enough of the prompt to matter: the least loaded wins,
       which is also where the new prefix has the most room to stay cached.

    "Least loaded" orders by requests inflight, then by share of KV tokens used; replicas
    tied on both take turns, so new prefixes spread over the pool.
    """

    def __init__(
        self,
        cache_threshold: float = 0.3,
        balance_abs_threshold: int = 8,
        balance_rel_threshold: float = 1.5,
        tier_weight: float = 0.5,
    ) -> None:
        if not 0.0 <= cache_threshold <= 1.0:
            raise ValueError(f"cache_threshold must be within [0, 1], got {cache_threshold}")
        if balance_abs_threshold < 0 or balance_rel_threshold < 1.0:
            raise ValueError(
                "balance_abs_threshold must be >= 0 and balance_rel_threshold >= 1, got "
                f"{balance_abs_threshold} and {balance_rel_threshold}"
            )
        if not 0.0 <= tier_weight <= 1.0:
            raise ValueError(f"tier_weight must be within [0, 1], got {tier_weight}")
        self.cache_threshold = cache_threshold
        self.tier_weight = tier_weight
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self._turn = itertools.count()

    def choose(self, request: EngineRequest, replicas: Sequence[ReplicaView]) -> int:
        lo = min(r.inflight for r in replicas)
        hi = max(r.inflight for r in replicas)
        if hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo:
            return self._least_loaded(replicas)
        prompt_len = len(request.input_ids)
        matches = [(self._match(r, request.input_ids), r) for r in replicas]
        best = max(m for m, _ in matches)
        if best > 0 and best >= self.cache_threshold * prompt_len:
            return self._least_loaded([r for m, r in matches if m == best])
        return self._least_loaded(replicas)

    def _match(self, replica: ReplicaView, ids: Sequence[int]) -> float:
        device = replica.prefix_match_len(ids)
        return device + self.tier_weight * max(0, replica.tier_match_len(ids) - device)

    def _least_loaded(self, replicas: Sequence[ReplicaView]) -> int:
        lightest = min(_load_key(r) for r in replicas)
        tied = sorted((r for r in replicas if _load_key(r) == lightest), key=lambda r: r.index)
        if len(tied) == 1:
            return tied[0].index
        return tied[next(self._turn) % len(tied)].index
