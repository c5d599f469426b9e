"""Waiting-queue order (`--queue-policy` plugins).

A policy gets the waiting requests (read-only: rid, token_ids, priority, arrival_time,
seq, retracted; see `Req`) and a function that asks the prefix cache how many leading
tokens of a sequence it holds. It returns the requests in the order the scheduler should
try to admit them; the scheduler admits in that order until the token budget, the running
limit or the pool stops it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from .request import Req

PrefixMatchLen = Callable[[Sequence[int]], int]


@runtime_checkable
class QueuePolicy(Protocol):
    name: str

    def order(self, waiting: Sequence[Req], prefix_match_len: PrefixMatchLen) -> list[Req]: ...


class FCFS:
    """First come, first served (by arrival; a retracted request keeps its place)."""

    name = "fcfs"

    def order(self, waiting: Sequence[Req], prefix_match_len: PrefixMatchLen) -> list[Req]:
        return sorted(waiting, key=lambda w: (w.arrival_time, w.seq))
