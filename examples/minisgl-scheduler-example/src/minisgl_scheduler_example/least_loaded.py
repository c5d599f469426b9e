"""least_loaded: send each request to the replica with the fewest requests in flight.

A complete minisgl dispatch policy plugin: the policy class and the hook that registers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from minisgl.dispatch import ReplicaView
from minisgl.hookspecs import hookimpl
from minisgl.specs import DispatchPolicySpec

if TYPE_CHECKING:  # the request's type, for annotations only: importing it loads torch
    from minisgl.engine.messages import EngineRequest


class LeastLoaded:
    """Fewest requests inflight wins; then the lowest share of KV cache used; then the
    lowest replica index, so the choice is deterministic."""

    def choose(self, request: EngineRequest, replicas: Sequence[ReplicaView]) -> int:
        def load(replica: ReplicaView) -> tuple[int, float, int]:
            total = replica.kv_total_tokens
            kv_share = replica.kv_used_tokens / total if total > 0 else 0.0
            return replica.inflight, kv_share, replica.index

        return min(replicas, key=load).index


@hookimpl
def minisgl_register_schedulers(register):
    # The factory is an import string: minisgl imports it only when the policy is used.
    register(
        DispatchPolicySpec(
            name="least_loaded",
            description="the replica with the fewest requests in flight, then the least KV used",
            factory="minisgl_scheduler_example.least_loaded:LeastLoaded",
        )
    )
