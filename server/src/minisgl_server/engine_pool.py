"""The engine side of the server: a pool of engine replicas (one engine process each,
placed by replica_layout), a dispatch policy choosing one per request, and the inflight
caps (MAX_INFLIGHT_TOTAL, MAX_INFLIGHT_PER_ENGINE) that turn overload into 429s.

A replica that dies is taken out of rotation: its in-flight requests get an error, its
PrefixTracker is forgotten, and the others keep serving. The pool is unavailable (503)
only when no replica is left."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq.asyncio

from minisgl.dispatch import (
    DispatchPolicyError,
    DispatchRequest,
    PrefixTracker,
    choose_replica,
    load_dispatch_policy,
)
from minisgl.frontend.errors import ErrorKind, RequestError
from minisgl.ipc.client import EngineClient, EngineUnavailable
from minisgl.ipc.endpoints import EndpointAllocator
from minisgl.ipc.protocol import EngineReady
from minisgl.plugins import PluginError, Registry
from minisgl.settings import Settings

from .replica import Replica
from .replica_layout import ReplicaPlacement, describe, plan_replicas

log = logging.getLogger("minisgl.server")

LOAD_REFRESH_S = 1.0  # how often policies' view of engine load (running, waiting, KV) is refreshed


class SchedulerError(ValueError):
    """SCHEDULER_MODE / --scheduler / set_scheduler named a policy that cannot be used."""


class Lease:
    """`count` inflight slots on one replica, held for one HTTP request."""

    def __init__(self, replica: Replica, count: int, inflight_before: int) -> None:
        self.replica = replica
        self.client = replica.client
        self.count = count
        self.inflight_before = inflight_before  # the pool's inflight total when admitted
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.replica.inflight -= self.count


class EnginePool:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.placements: list[ReplicaPlacement] = plan_replicas(settings)
        self.ctx = zmq.asyncio.Context()
        self.endpoints = EndpointAllocator()
        self.replicas: list[Replica] = []
        self.state = "created"  # created | starting | ready | draining | failed | stopped
        self.policy_name, self.policy = self._make_policy(settings.scheduler)
        self.ready_infos: list[EngineReady] = []
        self.adaptive_downscaled_total = 0  # engine requests whose max_new_tokens was scaled down
        self._on_death: Callable[[EngineClient], None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    # ---- dispatch policy ---------------------------------------------------------------
    def _make_policy(self, name: str) -> tuple[str, Any]:
        try:
            return name, load_dispatch_policy(name, self.registry, self.settings)
        except (PluginError, DispatchPolicyError) as exc:
            raise SchedulerError(str(exc)) from None

    def set_policy(self, name: str) -> dict[str, Any]:
        previous = self.policy_name
        self.policy_name, self.policy = self._make_policy(name)
        log.info("dispatch policy: %s -> %s", previous, self.policy_name)
        return {"previous": previous, "scheduler": self.policy_name}

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self, on_death: Callable[[EngineClient], None] | None = None) -> list[EngineReady]:
        """Start every replica (each loads and warms up its model) and wait for all."""
        self.state = "starting"
        self._on_death = on_death
        log.info("engine pool: %d replica(s): %s", len(self.placements), describe(self.placements))
        budget = self.settings.prefix_cache_token_budget or 32768
        for placement in self.placements:
            client = EngineClient(
                self.settings, placement.index, self.endpoints.for_replica(placement.index), self.ctx,
                on_death=self._replica_died, env=placement.env,
            )
            self.replicas.append(Replica(client, placement, tracker_tokens=budget))
        try:
            self.ready_infos = list(await asyncio.gather(*(r.client.start() for r in self.replicas)))
        except BaseException:
            self.state = "failed"
            raise
        await self.refresh_load()
        for r in self.replicas:
            # the tracker remembers at most what the replica's KV pool can hold
            kv = int(r.engine_metrics.get("kv_total_tokens", 0) or 0)
            if kv:
                r.tracker = PrefixTracker(max_tokens=min(kv, budget))
        self.state = "ready"
        self._refresher = asyncio.create_task(self._refresh_forever(), name="pool-load-refresh")
        return self.ready_infos

    async def stop(self) -> None:
        self.state = "stopped"
        if self._refresher is not None:
            self._refresher.cancel()
        await asyncio.gather(*(r.client.stop() for r in self.replicas), return_exceptions=True)
        self.endpoints.close()
        self.ctx.term()

    def _replica_died(self, client: EngineClient) -> None:
        replica = self.replicas[client.replica]
        replica.tracker.clear()
        left = len(self.alive)
        if left:
            log.error("engine replica %d taken out of rotation (%s); %d replica(s) keep serving",
                      client.replica, client.error, left)
        else:
            log.error("engine replica %d died (%s): no replica is left, requests get 503", client.replica, client.error)
        if self._on_death is not None:
            self._on_death(client)

    @property
    def clients(self) -> list[EngineClient]:
        return [r.client for r in self.replicas]

    @property
    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    @property
    def healthy(self) -> bool:
        """Serving: started and at least one replica alive (others may be down: degraded)."""
        return self.state in ("ready", "draining") and bool(self.alive)

    @property
    def degraded(self) -> bool:
        return bool(self.replicas) and len(self.alive) < len(self.replicas)

    @property
    def inflight_total(self) -> int:
        return sum(r.inflight for r in self.replicas)

    def unavailable_reason(self) -> str:
        if self.state in ("created", "starting"):
            return "the model is still loading; retry when /health answers 200"
        if self.state == "draining":
            return "the server is draining: it finishes running requests and admits no new ones"
        dead = [r.client for r in self.replicas if not r.alive]
        if dead:
            return "; ".join(f"engine replica {c.replica} is down: {c.error or c.state}" for c in dead)
        return f"engine pool is {self.state}"

    # ---- engine load, for policies -------------------------------------------------------
    async def refresh_load(self) -> list[dict[str, Any] | None]:
        """Ask every live replica for its metrics; returns them by replica (None: no answer)."""
        live = self.alive
        answers = await asyncio.gather(*(r.client.call("metrics", timeout=5.0) for r in live), return_exceptions=True)
        by_index: dict[int, dict[str, Any]] = {}
        for replica, answer in zip(live, answers, strict=True):
            if isinstance(answer, dict):
                replica.record_metrics(answer)
                by_index[replica.index] = answer
            elif not isinstance(answer, EngineUnavailable):
                log.warning("engine replica %d: metrics unavailable: %s", replica.index, answer)
        return [by_index.get(r.index) for r in self.replicas]

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(LOAD_REFRESH_S)
            try:
                await self.refresh_load()
            except Exception as exc:  # never let the refresher die
                log.warning("engine load refresh failed: %s", exc)

    # ---- admission -------------------------------------------------------------------
    def lease(self, count: int, input_ids: Sequence[int], rid: str = "") -> Lease:
        """Reserve `count` engine requests on one replica, or raise 503 / 429."""
        if self.state != "ready" or not self.alive:
            kind = ErrorKind.NOT_READY if self.state in ("created", "starting", "draining") else ErrorKind.ENGINE_DEAD
            raise RequestError(kind, self.unavailable_reason())
        inflight = self.inflight_total
        cap_total = self.settings.max_inflight_total
        if cap_total and inflight + count > cap_total:
            raise RequestError(ErrorKind.CAPACITY,
                               f"too many requests in flight ({inflight}/{cap_total}, MAX_INFLIGHT_TOTAL); retry later")
        cap_engine = self.settings.max_inflight_per_engine
        candidates = [r.view(cap_engine) for r in self.alive if not cap_engine or r.inflight + count <= cap_engine]
        if not candidates:
            raise RequestError(ErrorKind.CAPACITY,
                               f"every engine replica is at its inflight cap ({cap_engine}, MAX_INFLIGHT_PER_ENGINE); "
                               "retry later")
        try:
            index = choose_replica(self.policy, DispatchRequest(rid=rid, token_ids=input_ids), candidates)
        except Exception as exc:  # a faulty policy: say which, do not crash the request handler
            log.error("dispatch policy %r failed: %s: %s", self.policy_name, type(exc).__name__, exc)
            raise RequestError(ErrorKind.INTERNAL, f"dispatch policy {self.policy_name!r} failed: {exc}") from None
        replica = self.replicas[index]
        replica.record_dispatch(count, input_ids)
        return Lease(replica, count, inflight)

    # ---- engine calls ----------------------------------------------------------------
    async def call_all(self, method: str, timeout: float = 30.0, **args: Any) -> list[Any]:
        results = await asyncio.gather(*(r.client.call(method, timeout=timeout, **args) for r in self.alive),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for err in errors:
            if not isinstance(err, EngineUnavailable | asyncio.TimeoutError):
                raise err
        return [r for r in results if not isinstance(r, BaseException)]

    async def warm(self, token_id_lists: list[list[int]]) -> list[int]:
        """Prefill each list into every live replica's prefix cache; tokens cached per replica."""
        async def one(replica: Replica) -> int:
            cached = int(await replica.client.call("warm", token_id_lists=token_id_lists, timeout=300) or 0)
            replica.warmed_tokens += cached
            for ids in token_id_lists:
                replica.tracker.insert(ids)
            return cached

        live = self.alive
        results = await asyncio.gather(*(one(r) for r in live), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, EngineUnavailable | asyncio.TimeoutError):
                raise result
        return [r if isinstance(r, int) else 0 for r in results]

    async def flush_cache(self) -> int:
        """Empty every live replica's prefix cache (and the pool's guess of it)."""
        freed = 0
        for replica in self.alive:
            try:
                freed += int(await replica.client.call("flush_cache") or 0)
            except EngineUnavailable:
                pass
            replica.tracker.clear()
        return freed

    async def drain(self, timeout: float) -> dict[str, Any]:
        """Stop admitting new requests and wait for the running ones to finish."""
        if self.state == "ready":
            self.state = "draining"
        started = time.monotonic()
        while self.inflight_total and time.monotonic() - started < timeout:
            await asyncio.sleep(0.05)
        log.info("drained: %d requests still in flight after %.1fs", self.inflight_total, time.monotonic() - started)
        return {"draining": True, "inflight": self.inflight_total, "waited_s": round(time.monotonic() - started, 3)}
