"""Dispatch policies: which engine replica serves a request (SCHEDULER_MODE / --scheduler).

A policy is a small object with `choose(candidates, input_ids) -> candidate`. Candidates are
the replicas that are healthy and under their inflight cap, each with at least `.index` and
`.inflight`. The core ships round robin; more policies come from plugins."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class DispatchPolicy(Protocol):
    name: str

    def choose(self, candidates: Sequence[Any], input_ids: Sequence[int]) -> Any: ...


class RoundRobin:
    """Cycle through the replicas in index order, skipping those not offered."""

    name = "rr"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[Any], input_ids: Sequence[int]) -> Any:
        if not candidates:
            raise ValueError("no replica to choose from")
        ordered = sorted(candidates, key=lambda c: c.index)
        pick = next((c for c in ordered if c.index >= self._next), ordered[0])
        self._next = pick.index + 1
        return pick
