"""One engine replica as the pool sees it: its engine client, where it runs, what the pool
dispatched to it, its last engine metrics, and the PrefixTracker that guesses what its
prefix cache holds. Policies never see this object, only `view()`'s read-only snapshot."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from minisgl.dispatch import PrefixTracker, ReplicaView
from minisgl.ipc.client import EngineClient

from .replica_layout import ReplicaPlacement

# engine metrics a policy may see (ReplicaView's load fields)
VIEW_KEYS = ("num_running_reqs", "num_waiting_reqs", "kv_total_tokens", "kv_used_tokens")


class Replica:
    def __init__(self, client: EngineClient, placement: ReplicaPlacement, tracker_tokens: int) -> None:
        self.client = client
        self.placement = placement
        self.tracker = PrefixTracker(max_tokens=tracker_tokens)
        self.inflight = 0  # engine requests leased and not released
        self.requests_dispatched = 0  # HTTP requests the policy sent here
        self.warmed_tokens = 0  # prefix tokens WARM_PREFIXES / `warm` put in its cache
        self.engine_metrics: dict[str, Any] = {}  # the last answer of its engine's metrics()
        self.metrics_at = 0.0

    @property
    def index(self) -> int:
        return self.client.replica

    @property
    def alive(self) -> bool:
        return self.client.alive

    def record_metrics(self, metrics: dict[str, Any]) -> None:
        self.engine_metrics = metrics
        self.metrics_at = time.monotonic()

    def record_dispatch(self, count: int, token_ids: Sequence[int]) -> None:
        self.inflight += count
        self.requests_dispatched += 1
        if token_ids:
            self.tracker.insert(token_ids)  # its cache will hold this prompt once prefilled

    def view(self, max_inflight: int) -> ReplicaView:
        m = self.engine_metrics
        load = {key: int(m.get(key, 0) or 0) for key in VIEW_KEYS}
        return ReplicaView(
            index=self.index, inflight=self.inflight, max_inflight=max_inflight,
            _prefix_match=self.tracker.match_len, **load,
        )

    def summary(self) -> dict[str, Any]:
        """The pool's side of this replica for /metrics and /health."""
        c = self.client
        return {
            "index": self.index,
            "healthy": c.alive,
            "state": c.state,
            "error": c.error,
            "pid": c.pid,
            "device": self.placement.device,
            "inflight": self.inflight,
            "requests_dispatched": self.requests_dispatched,
            "warmed_tokens": self.warmed_tokens,
            "tracked_prefix_tokens": self.tracker.num_tokens,
        }
