"""The engine side of the server: a pool of engine replicas (settings.dp_size engine
processes), a dispatch policy choosing one per request, and the inflight caps
(MAX_INFLIGHT_TOTAL, MAX_INFLIGHT_PER_ENGINE) that turn overload into 429s."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import zmq.asyncio

from minisgl.dispatch import DispatchRequest, ReplicaView, choose_replica, load_dispatch_policy
from minisgl.ipc.client import EngineClient, EngineUnavailable
from minisgl.ipc.endpoints import EndpointAllocator
from minisgl.ipc.protocol import EngineReady
from minisgl.plugins import PluginError, Registry
from minisgl.settings import Settings

from .errors import APIError

log = logging.getLogger("minisgl.server")

RETRY_AFTER_S = "1"


class Lease:
    """`count` inflight slots on one replica, held for one HTTP request."""

    def __init__(self, pool: EnginePool, client: EngineClient, count: int) -> None:
        self.pool = pool
        self.client = client
        self.count = count
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.pool._inflight[self.client.replica] -= self.count


class EnginePool:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.ctx = zmq.asyncio.Context()
        self.endpoints = EndpointAllocator()
        self.clients: list[EngineClient] = []
        self._inflight: dict[int, int] = {}
        self.state = "created"  # created | starting | ready | draining | failed | stopped
        self.policy_name, self.policy = self._make_policy(settings.scheduler)
        self.ready_infos: list[EngineReady] = []

    # ---- dispatch policy ---------------------------------------------------------------
    def _make_policy(self, name: str) -> tuple[str, Any]:
        try:
            return name, load_dispatch_policy(name, self.registry, self.settings)
        except PluginError as exc:
            raise APIError(400, str(exc), param="name") from None

    def set_policy(self, name: str) -> dict[str, Any]:
        previous = self.policy_name
        self.policy_name, self.policy = self._make_policy(name)
        log.info("dispatch policy: %s -> %s", previous, self.policy_name)
        return {"previous": previous, "scheduler": self.policy_name}

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self, on_death: Any = None) -> list[EngineReady]:
        self.state = "starting"
        for index in range(self.settings.dp_size):
            client = EngineClient(self.settings, index, self.endpoints.for_replica(index), self.ctx, on_death=on_death)
            self.clients.append(client)
            self._inflight[index] = 0
        try:
            self.ready_infos = list(await asyncio.gather(*(c.start() for c in self.clients)))
        except BaseException:
            self.state = "failed"
            raise
        self.state = "ready"
        return self.ready_infos

    async def stop(self) -> None:
        self.state = "stopped"
        await asyncio.gather(*(c.stop() for c in self.clients), return_exceptions=True)
        self.endpoints.close()
        self.ctx.term()

    @property
    def alive(self) -> list[EngineClient]:
        return [c for c in self.clients if c.alive]

    @property
    def healthy(self) -> bool:
        return self.state in ("ready", "draining") and bool(self.clients) and all(c.alive for c in self.clients)

    @property
    def inflight_total(self) -> int:
        return sum(self._inflight.values())

    def unavailable_reason(self) -> str:
        if self.state in ("created", "starting"):
            return "the model is still loading; retry when /health answers 200"
        if self.state == "draining":
            return "the server is draining: it finishes running requests and admits no new ones"
        dead = [c for c in self.clients if not c.alive]
        if dead:
            return "; ".join(f"engine replica {c.replica} is down: {c.error or c.state}" for c in dead)
        return f"engine pool is {self.state}"

    # ---- admission -------------------------------------------------------------------
    def lease(self, count: int, input_ids: Sequence[int], rid: str = "") -> Lease:
        """Reserve `count` engine requests on one replica, or raise 503 / 429."""
        if self.state != "ready" or not self.alive:
            raise APIError(503, self.unavailable_reason(), code="engine_unavailable")
        cap_total = self.settings.max_inflight_total
        if cap_total and self.inflight_total + count > cap_total:
            raise APIError(
                429,
                f"too many requests in flight ({self.inflight_total}/{cap_total}, MAX_INFLIGHT_TOTAL); retry later",
                code="rate_limit_exceeded",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        cap_engine = self.settings.max_inflight_per_engine
        candidates = [
            ReplicaView(index=c.replica, inflight=self._inflight[c.replica], max_inflight=cap_engine)
            for c in self.alive
            if not cap_engine or self._inflight[c.replica] + count <= cap_engine
        ]
        if not candidates:
            raise APIError(
                429,
                f"every engine replica is at its inflight cap ({cap_engine}, MAX_INFLIGHT_PER_ENGINE); retry later",
                code="rate_limit_exceeded",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        index = choose_replica(self.policy, DispatchRequest(rid=rid, token_ids=input_ids), candidates)
        self._inflight[index] += count
        return Lease(self, self.clients[index], count)

    # ---- engine calls ----------------------------------------------------------------
    async def call_all(self, method: str, timeout: float = 30.0, **args: Any) -> list[Any]:
        results = await asyncio.gather(*(c.call(method, timeout=timeout, **args) for c in self.alive), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for err in errors:
            if not isinstance(err, EngineUnavailable | asyncio.TimeoutError):
                raise err
        return [r for r in results if not isinstance(r, BaseException)]

    async def drain(self, timeout: float) -> dict[str, Any]:
        """Stop admitting new requests and wait for the running ones to finish."""
        if self.state == "ready":
            self.state = "draining"
        started = time.monotonic()
        while self.inflight_total and time.monotonic() - started < timeout:
            await asyncio.sleep(0.05)
        log.info("drained: %d requests still in flight after %.1fs", self.inflight_total, time.monotonic() - started)
        return {"draining": True, "inflight": self.inflight_total, "waited_s": round(time.monotonic() - started, 3)}
