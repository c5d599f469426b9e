"""Dispatch policies choose which engine replica serves a request (SCHEDULER_MODE).

This is the stable, typed interface third-party scheduler plugins implement. A policy sees
a read-only snapshot of each replica (`ReplicaView`) and the request (`DispatchRequest`),
never engine internals, and returns the index of the replica to use. The pool only offers
replicas that are healthy and under their inflight caps; a policy may assume `replicas`
is non-empty.

A policy is any object with `choose(request, replicas) -> int`; the registered factory is
called once with no arguments (or with `settings=` if it accepts it) when the pool starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class DispatchRequest:
    rid: str
    token_ids: Sequence[int]
    priority: int = 0


@dataclass(frozen=True)
class ReplicaView:
    """What a policy may know about one replica, at the moment of the choice."""

    index: int  # position in the pool (stable for the pool's lifetime)
    inflight: int  # requests dispatched to it and not finished yet
    max_inflight: int  # its cap (MAX_INFLIGHT_PER_ENGINE); 0 = unlimited
    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_total_tokens: int = 0
    kv_used_tokens: int = 0
    # How many leading tokens of a prompt this replica's prefix cache likely holds.
    _prefix_match: Callable[[Sequence[int]], int] = field(default=lambda ids: 0, repr=False)

    def prefix_match_len(self, token_ids: Sequence[int]) -> int:
        return self._prefix_match(token_ids)

    @property
    def free_slots(self) -> int | None:
        """Requests it may still take before its cap; None when uncapped."""
        return None if self.max_inflight <= 0 else max(0, self.max_inflight - self.inflight)


@runtime_checkable
class DispatchPolicy(Protocol):
    def choose(self, request: DispatchRequest, replicas: Sequence[ReplicaView]) -> int:
        """Return `index` of one of `replicas`."""
        ...


class RoundRobin:
    """Each request to the next replica in turn (skipping the ones not offered)."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, request: DispatchRequest, replicas: Sequence[ReplicaView]) -> int:
        return replicas[next(self._counter) % len(replicas)].index
