"""Everything one server process holds: settings, the plugin registry, the models it serves
(MODEL_NAME, and VLM_MODEL_NAME beside it when that is another model: see served_model),
stats, and the startup sequence."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from minisgl.frontend.errors import ErrorKind, RequestError
from minisgl.frontend.images import ImageRules
from minisgl.plugins import Registry
from minisgl.settings import Settings

from .engine_pool import EnginePool
from .replica import Replica
from .responses_store import ResponseStore
from .served_model import ServedModel, vision_settings
from .stats import ServerStats

log = logging.getLogger("minisgl.server")

SHUTDOWN_GRACE_S = 5.0  # after the drain: how long ended requests get to write their error


class ServerState:
    def __init__(self, settings: Settings, sources: dict[str, str], registry: Registry) -> None:
        self.settings = settings
        self.sources = sources
        self.registry = registry
        self.models = [ServedModel(settings, registry, served_name=settings.served_model_name)]
        vision = vision_settings(settings)
        if vision is not None:
            self.models.append(ServedModel(vision, registry, role="vision"))
        self.stats = ServerStats(settings.metric_window)
        self.image_rules = ImageRules.from_settings(settings)
        self.ready = False
        self.startup_error: str | None = None
        self.request_shutdown: Callable[[], None] = lambda: None
        self.control: Any = None
        self.warming: asyncio.Task[None] | None = None  # WARM_PREFIXES under ASYNC_PREFILL_QUEUE
        self.responses = ResponseStore(settings.responses_store, settings.responses_store_max)

    @property
    def primary(self) -> ServedModel:
        return self.models[0]

    @property
    def pool(self) -> EnginePool:
        """MODEL_NAME's engine pool (the dispatch policy, the replicas /metrics counts)."""
        return self.primary.pool

    @property
    def pools(self) -> list[EnginePool]:
        return [m.pool for m in self.models]

    @property
    def model_id(self) -> str:
        return self.primary.model_id

    def route(self, model: str | None = None, images: bool = False) -> ServedModel:
        """The served model for a request: the one its `model` names, else (with images) the
        vision-language one, else MODEL_NAME; NOT_READY, MODEL_NOT_FOUND or unavailable."""
        if model:
            served = next((m for m in self.models if m.accepts(model)), None)
            if served is None:
                names = ", ".join(f"`{m.model_id}`" for m in self.models)
                raise RequestError(ErrorKind.MODEL_NOT_FOUND, f"the model `{model}` does not exist; this server "
                                   f"serves {names} (GET /v1/models)", "model")
        elif images:
            served = next((m for m in self.models if m.takes_images), self.primary)
        else:
            served = self.primary
        if not self.ready or not served.pool.healthy or served.frontend is None:
            reason = self.health()[1].get("reason", "not ready")
            if not self.ready:  # the tokenizer loading or WARM_PREFIXES warming: retry soon
                raise RequestError(ErrorKind.NOT_READY, reason)
            raise served.pool.unavailable_error(reason)
        return served

    async def start(self) -> None:
        """Start the engines, load the tokenizers, warm WARM_PREFIXES, then say ready.
        A failure is logged and shuts the server down (exit status 1)."""
        # import transformers while the engine loads, so the tokenizer is quick after "ready"
        # (a daemon thread: a failed start must not wait for it at exit)
        threading.Thread(target=importlib.import_module, args=("transformers",), daemon=True).start()
        try:
            await asyncio.gather(*(m.start(on_restart=self._rewarm) for m in self.models))
        except Exception as exc:
            self.startup_error = f"{type(exc).__name__}: {exc}"
            log.error("server startup failed: %s", self.startup_error)
            self.request_shutdown()
            return
        if self.settings.warm_prefixes:
            if self.settings.async_prefill_queue:
                # ASYNC_PREFILL_QUEUE: /health turns 200 now; the caches fill in the background
                self.warming = asyncio.create_task(self._warm_at_start(), name="warm-prefixes")
            else:
                await self._warm_at_start()
        self.ready = True
        log.info("ready: /health answers 200 (scheduler %s)", self.pool.policy_name)

    async def _warm_at_start(self) -> None:
        prefixes = self.settings.warm_prefixes
        try:
            result = await self.warm(prefixes)
            log.info("WARM_PREFIXES: %d prefixes cached in %d replica(s): %s tokens per replica",
                     len(prefixes), len(result["replicas"]), result["replicas"])
        except Exception as exc:  # a cold cache is slower, not broken
            log.warning("WARM_PREFIXES failed: %s: %s", type(exc).__name__, exc)

    async def _rewarm(self, served: ServedModel, replica: Replica) -> None:
        """A restarted replica gets WARM_PREFIXES again before it rejoins the rotation."""
        prefixes = served.settings.warm_prefixes
        if not prefixes or served.tokenizers is None:
            return
        cached = await served.warm(prefixes, [replica])
        log.info("WARM_PREFIXES: %d prefixes cached again in restarted replica %d: %d tokens",
                 len(prefixes), replica.index, sum(cached))

    async def shutdown(self, drain_timeout: float) -> None:
        """SIGTERM/SIGINT: stop admitting (503 not_ready, /health "draining"), let running
        requests finish for up to `drain_timeout` seconds (pool.drain, the one owner of
        draining), end the rest with an error, then ask uvicorn to stop; the lifespan's end
        stops the engines (`stop`)."""
        pools = self.pools
        for pool in pools:
            pool.begin_shutdown()
        log.info("shutting down: draining %d request(s) in flight for up to %.0fs (DRAIN_TIMEOUT_S); "
                 "new requests get 503", sum(p.inflight_total for p in pools), drain_timeout)
        try:
            results = await asyncio.gather(*(pool.drain(drain_timeout) for pool in pools))
            left = sum(r["inflight"] for r in results)
            waited = max(r["waited_s"] for r in results)
            if left:
                log.warning("shutting down: %d request(s) still in flight after %.1fs: ending them with an error",
                            left, waited)
                for pool in pools:
                    pool.end_inflight(f"the server is shutting down: the request did not finish within the drain "
                                      f"timeout ({drain_timeout:g}s, DRAIN_TIMEOUT_S)")
                idle = await asyncio.gather(*(pool.wait_idle(SHUTDOWN_GRACE_S) for pool in pools))
                if not all(idle):
                    log.warning("shutting down: %d request(s) did not let go in %.0fs",
                                sum(p.inflight_total for p in pools), SHUTDOWN_GRACE_S)
            else:
                log.info("shutting down: drained, 0 request(s) still in flight after %.1fs", waited)
        finally:
            self.request_shutdown()

    async def stop(self) -> None:
        if self.warming is not None:
            self.warming.cancel()
        if self.control is not None:
            await self.control.stop()
        await asyncio.gather(*(m.stop() for m in self.models))
        self.responses.close()

    # ---- operations shared by HTTP routes and control commands ---------------------------
    async def warm(self, prefixes: list[str]) -> dict[str, Any]:
        """Put each prefix in every live replica's prefix cache, of every served model."""
        if not all(m.tokenizers is not None and m.pool.alive for m in self.models):
            raise RuntimeError("; ".join(m.pool.unavailable_reason() for m in self.models if not m.pool.alive)
                               or "the tokenizers are not loaded yet")
        per_replica = [n for per_model in await asyncio.gather(*(m.warm(prefixes) for m in self.models))
                       for n in per_model]
        return {"prefixes": len(prefixes), "cached_tokens": sum(per_replica), "replicas": per_replica}

    async def flush_cache(self, tier: str | None = None) -> dict[str, Any]:
        """What each tier dropped, over every replica of every served model."""
        dropped: dict[str, int] = {}
        for per_pool in await asyncio.gather(*(pool.flush_cache(tier) for pool in self.pools)):
            for key, n in per_pool.items():
                dropped[key] = dropped.get(key, 0) + n
        return {"tier": tier or "device+host", "flushed_tokens": 0, **dropped}

    async def cache_stats(self) -> dict[str, Any]:
        per_model = await asyncio.gather(*(m.pool.cache_stats() for m in self.models))
        return {"replicas": [{"model": m.model_id, **r} for m, rs in zip(self.models, per_model, strict=True)
                             for r in rs]}

    async def drain(self, timeout: float) -> dict[str, Any]:
        results = await asyncio.gather(*(pool.drain(timeout) for pool in self.pools))
        return results[0] if len(results) == 1 else {"models": results, **results[0],
                                                     "inflight": sum(r["inflight"] for r in results)}

    def resume(self) -> dict[str, Any]:
        results = [pool.resume() for pool in self.pools]
        return results[0]

    def set_scheduler(self, name: str) -> dict[str, Any]:
        results = [pool.set_policy(name) for pool in self.pools]
        return results[0]

    def health(self) -> tuple[bool, dict[str, Any]]:
        """200 while every served model has a replica that serves (`degraded` when some are
        down); 503 while loading, draining (status "draining": new requests get 503 until
        `resume`) or down."""
        pools = self.pools
        draining = any(p.state == "draining" for p in pools)
        serving = all(p.healthy for p in pools)
        healthy = self.ready and serving and not draining
        if healthy:
            status = "ok"
        elif draining and self.ready and all(p.alive for p in pools):
            status = "draining"
        elif self.ready and all(p.state == "ready" for p in pools) and any(p.restarting for p in pools):
            status = "restarting"  # no replica serves, one is coming back: retry
        else:
            status = "loading" if not self.ready and not self.startup_error else "unavailable"
        body: dict[str, Any] = {
            "status": status,
            "model": self.model_id,
            "degraded": any(p.degraded for p in pools),
            "replicas_alive": sum(len(p.alive) for p in pools),
            "replicas_total": sum(len(p.replicas) for p in pools),
            "warming": self.warming is not None and not self.warming.done(),
            "shutting_down": any(p.shutting_down for p in pools),
            "engines": [
                {"replica": r.index, "pid": r.client.pid, "state": r.state, "error": r.error,
                 "restarts": r.restarts, "last_death": r.last_death, "inflight": r.client.inflight,
                 "device": r.device, "node": r.client.host.node, **({"model": m.model_id} if len(self.models) > 1 else {})}
                for m in self.models for r in m.pool.replicas
            ],
        }
        if len(self.models) > 1:
            body["models"] = [m.model_id for m in self.models]
        reasons = [p.unavailable_reason() for p in pools if not p.healthy or p.degraded]
        if not healthy:
            body["reason"] = self.startup_error or "; ".join(reasons) or self.pool.unavailable_reason()
        elif reasons:
            body["reason"] = "; ".join(reasons)
        return healthy, body

    def uptime_s(self) -> float:
        return time.time() - self.stats.started_at
