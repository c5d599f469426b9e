"""One engine replica as the pool sees it: its engine client, where it runs, what the pool
dispatched to it, its last engine metrics, and the PrefixTrackers that guess what its
prefix cache holds: one for the device pool, one for its hierarchical cache's host and disk
tiers (while those are on), which a finished prefix reaches and outlives the pool in.
Policies never see this object, only `view()`'s read-only snapshot.

The replica outlives its engine processes: when the pool's supervisor restarts a dead
engine, `client` is replaced and the counters the dead process had reported are carried
over, so per-replica counters never go backwards."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from minisgl.dispatch import PrefixTracker, ReplicaView
from minisgl.ipc.client import EngineClient

from .metrics import COUNTERS
from .replica_layout import ReplicaPlacement

# engine metrics a policy may see (ReplicaView's load fields)
VIEW_KEYS = ("num_running_reqs", "num_waiting_reqs", "kv_total_tokens", "kv_used_tokens")


def _no_match(token_ids: Sequence[int]) -> int:
    return 0


class Replica:
    def __init__(self, client: EngineClient, placement: ReplicaPlacement, tracker_tokens: int) -> None:
        self.client = client
        self.placement = placement
        self.tracker = PrefixTracker(max_tokens=tracker_tokens)
        self.tier_tracker: PrefixTracker | None = None  # set by the pool once the engine reports tiers
        self.inflight = 0  # engine requests leased and not released
        self.requests_dispatched = 0  # HTTP requests the policy sent here
        self.warmed_tokens = 0  # prefix tokens WARM_PREFIXES / `warm` put in its cache
        self.engine_metrics: dict[str, Any] = {}  # the last answer of its engine's metrics()
        self.metrics_at = 0.0
        # supervision (EnginePool._supervise)
        self.restarts = 0  # engine processes started to replace a dead one, over the server's life
        self.failures_in_row = 0  # deaths counted against ENGINE_RESTART_LIMIT (reset: see the pool)
        self.ready_since: float | None = time.monotonic()  # when its current process began to serve
        self.restarting = False  # waiting out a backoff, or a new process loading and re-warming
        self.next_restart_at: float | None = None  # monotonic time of the next attempt, while waiting
        self.last_death: str | None = None  # why its last process died
        self.given_up: str | None = None  # why it stays down (restart limit reached or 0)
        self._carried: dict[str, int | float] = {}  # counters of its dead processes

    @property
    def index(self) -> int:
        return self.client.replica

    @property
    def alive(self) -> bool:
        """In rotation: its engine serves (a restarted one only once it is re-warmed)."""
        return self.client.alive and not self.restarting

    @property
    def state(self) -> str:
        """starting | ready | restarting | dead | stopped"""
        if self.given_up is not None:
            return "dead"
        if self.restarting:
            return "restarting"
        return {"created": "starting"}.get(self.client.state, self.client.state)

    @property
    def error(self) -> str | None:
        """Why it does not serve now (None while it serves; `last_death` keeps the history)."""
        if self.client.alive:
            return None
        return self.client.error or self.last_death

    def replace_client(self, client: EngineClient) -> None:
        """A new engine process for this replica: keep what the old one had counted."""
        for key, value in self.engine_metrics.items():
            if key in COUNTERS and isinstance(value, int | float) and not isinstance(value, bool):
                self._carried[key] = value  # engine_metrics already includes the older carries
        self.client = client
        self.restarts += 1
        self.ready_since = None

    def record_metrics(self, metrics: dict[str, Any]) -> None:
        if self._carried:
            metrics = {**metrics, **{k: v + metrics.get(k, 0) for k, v in self._carried.items()}}
        self.engine_metrics = metrics
        self.metrics_at = time.monotonic()

    def record_dispatch(self, count: int, token_ids: Sequence[int]) -> None:
        self.inflight += count
        self.requests_dispatched += 1
        if token_ids:
            self.remember(token_ids)  # its cache will hold this prompt once prefilled

    def remember(self, token_ids: Sequence[int]) -> None:
        self.tracker.insert(token_ids)
        if self.tier_tracker is not None:
            self.tier_tracker.insert(token_ids)

    def view(self, max_inflight: int) -> ReplicaView:
        m = self.engine_metrics
        load = {key: int(m.get(key, 0) or 0) for key in VIEW_KEYS}
        return ReplicaView(
            index=self.index, inflight=self.inflight, max_inflight=max_inflight,
            _prefix_match=self.tracker.match_len,
            _tier_match=self.tier_tracker.match_len if self.tier_tracker is not None else _no_match, **load,
        )

    @property
    def device(self) -> str:
        """What its engine computes on ("cpu", "cuda:0"); the placement's ("auto") until it is ready."""
        info = self.client.ready_info
        return info.device if info is not None and info.device else self.placement.device

    def summary(self) -> dict[str, Any]:
        """The pool's side of this replica for /metrics and /health."""
        c = self.client
        return {
            "index": self.index,
            "healthy": self.alive,
            "state": self.state,
            "error": self.error,
            "restarts": self.restarts,
            "last_death": self.last_death,
            "pid": c.pid,
            "device": self.device,
            "node": c.host.node,
            "inflight": self.inflight,
            "requests_dispatched": self.requests_dispatched,
            "warmed_tokens": self.warmed_tokens,
            "tracked_prefix_tokens": self.tracker.num_tokens,
            "tracked_tier_tokens": self.tier_tracker.num_tokens if self.tier_tracker is not None else 0,
        }
