"""Waiting-queue order (`--queue-policy` plugins) and the read-only view policies get.

A policy sees only `WaitingRequest`s (rid, token ids, priority, arrival) and a function
that asks the prefix cache how many leading tokens of a sequence it holds; never the
engine's internals. It returns the waiting requests in the order the scheduler should try
to admit them. The scheduler admits in that order until the token budget, the running
limit or the pool stops it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

PrefixMatchLen = Callable[[Sequence[int]], int]


@dataclass(frozen=True)
class WaitingRequest:
    rid: str
    token_ids: tuple[int, ...]  # what must be in the KV before decoding (prompt + any output kept over a retraction)
    priority: int
    arrival_time: float
    seq: int  # arrival order in this engine, a tie breaker
    retracted: bool = False  # preempted earlier; it keeps its place by arrival


@runtime_checkable
class QueuePolicy(Protocol):
    name: str

    def order(self, waiting: Sequence[WaitingRequest], prefix_match_len: PrefixMatchLen) -> list[WaitingRequest]: ...


class FCFS:
    """First come, first served (by arrival; a retracted request keeps its place)."""

    name = "fcfs"

    def order(self, waiting: Sequence[WaitingRequest], prefix_match_len: PrefixMatchLen) -> list[WaitingRequest]:
        return sorted(waiting, key=lambda w: (w.arrival_time, w.seq))
