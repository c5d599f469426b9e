"""Everything one server process holds: settings, the plugin registry, the engine pool,
the request layer and its tokenizers (once the engines are ready), stats, and the startup
sequence."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from minisgl.frontend.errors import ErrorKind, RequestError
from minisgl.frontend.generation import Frontend
from minisgl.frontend.images import ImageRules
from minisgl.frontend.tokenizer import Tokenizer, encode_prompts
from minisgl.frontend.tokenizer_pool import TokenizerPool
from minisgl.ipc.protocol import EngineReady
from minisgl.plugins import Registry
from minisgl.settings import Settings

from .engine_pool import EnginePool
from .replica import Replica
from .stats import ServerStats

log = logging.getLogger("minisgl.server")

SHUTDOWN_GRACE_S = 5.0  # after the drain: how long ended requests get to write their error


class ServerState:
    def __init__(self, settings: Settings, sources: dict[str, str], registry: Registry) -> None:
        self.settings = settings
        self.sources = sources
        self.registry = registry
        self.pool = EnginePool(settings, registry)
        self.stats = ServerStats(settings.metric_window)
        self.frontend: Frontend | None = None  # the request layer, once the engines are ready
        self.tokenizers: TokenizerPool | None = None
        self.info: EngineReady | None = None
        self.ready = False
        self.startup_error: str | None = None
        self.request_shutdown: Callable[[], None] = lambda: None
        self.control: Any = None
        self.warming: asyncio.Task[None] | None = None  # WARM_PREFIXES under ASYNC_PREFILL_QUEUE
        self.image_rules = ImageRules.from_settings(settings)

    @property
    def model_id(self) -> str:
        if self.settings.served_model_name:
            return self.settings.served_model_name
        return self.info.model_name if self.info else self.settings.model_path

    @property
    def max_context_len(self) -> int:
        assert self.info is not None
        ctx = self.info.max_context_len
        if self.settings.max_seq_len_override:
            ctx = min(ctx, self.settings.max_seq_len_override)
        return ctx

    def accepts_model(self, name: str | None) -> bool:
        return name in (None, "", self.model_id, self.settings.model_path, self.info.model_name if self.info else None)

    def ready_frontend(self, model: str | None = None) -> Frontend:
        """The request layer, once this server serves; NOT_READY or MODEL_NOT_FOUND otherwise."""
        if not self.ready or not self.pool.healthy or self.frontend is None:
            reason = self.health()[1].get("reason", "not ready")
            if not self.ready:  # the tokenizer loading or WARM_PREFIXES warming: retry soon
                raise RequestError(ErrorKind.NOT_READY, reason)
            raise self.pool.unavailable_error(reason)
        if not self.accepts_model(model):
            raise RequestError(ErrorKind.MODEL_NOT_FOUND, f"the model `{model}` does not exist; this server serves "
                               f"`{self.model_id}` (GET /v1/models)", "model")
        return self.frontend

    async def start(self) -> None:
        """Start the engines, load the tokenizer, warm WARM_PREFIXES, then say ready.
        A failure is logged and shuts the server down (exit status 1)."""
        # import transformers while the engine loads, so the tokenizer is quick after "ready"
        # (a daemon thread: a failed start must not wait for it at exit)
        threading.Thread(target=importlib.import_module, args=("transformers",), daemon=True).start()
        try:
            infos = await self.pool.start(on_restart=self._rewarm)
            self.info = infos[0]
            log.info(
                "model %s (%s) on backend %r: %s; context %d tokens; %d replica(s), loaded in %.1fs",
                self.info.model_name, self.info.model_path, self.info.backend, self.info.backend_reason,
                self.info.max_context_len, len(infos), max(i.load_seconds for i in infos),
            )
            s = self.settings
            tokenizer = await asyncio.to_thread(Tokenizer, self.info.model_path, s.trust_remote_code, s.token_cache_size)
            self.tokenizers = TokenizerPool(tokenizer, self.info.model_path, workers=s.num_tokenizer,
                                            trust_remote_code=s.trust_remote_code)
            await self.tokenizers.start()
            self.frontend = Frontend(tokenizer, max_context_len=self.max_context_len,
                                     eos_token_ids=self.info.eos_token_ids, max_new_tokens_default=s.max_new_tokens_default)
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

    async def _rewarm(self, replica: Replica) -> None:
        """A restarted replica gets WARM_PREFIXES again before it rejoins the rotation."""
        prefixes = self.settings.warm_prefixes
        if not prefixes or self.tokenizers is None:
            return
        result = await self.warm(prefixes, [replica])
        log.info("WARM_PREFIXES: %d prefixes cached again in restarted replica %d: %d tokens",
                 len(prefixes), replica.index, result["cached_tokens"])

    async def shutdown(self, drain_timeout: float) -> None:
        """SIGTERM/SIGINT: stop admitting (503 not_ready, /health "draining"), let running
        requests finish for up to `drain_timeout` seconds (pool.drain, the one owner of
        draining), end the rest with an error, then ask uvicorn to stop; the lifespan's end
        stops the engines (`stop`)."""
        pool = self.pool
        pool.begin_shutdown()
        log.info("shutting down: draining %d request(s) in flight for up to %.0fs (DRAIN_TIMEOUT_S); "
                 "new requests get 503", pool.inflight_total, drain_timeout)
        try:
            result = await pool.drain(drain_timeout)
            left = result["inflight"]
            if left:
                log.warning("shutting down: %d request(s) still in flight after %.1fs: ending them with an error",
                            left, result["waited_s"])
                pool.end_inflight(f"the server is shutting down: the request did not finish within the drain "
                                  f"timeout ({drain_timeout:g}s, DRAIN_TIMEOUT_S)")
                if not await pool.wait_idle(SHUTDOWN_GRACE_S):
                    log.warning("shutting down: %d request(s) did not let go in %.0fs", pool.inflight_total,
                                SHUTDOWN_GRACE_S)
            else:
                log.info("shutting down: drained, 0 request(s) still in flight after %.1fs", result["waited_s"])
        finally:
            self.request_shutdown()

    async def stop(self) -> None:
        if self.warming is not None:
            self.warming.cancel()
        if self.control is not None:
            await self.control.stop()
        await self.pool.stop()
        if self.tokenizers is not None:
            self.tokenizers.shutdown()

    # ---- operations shared by HTTP routes and control commands ---------------------------
    async def warm(self, prefixes: list[str], replicas: list[Replica] | None = None) -> dict[str, Any]:
        """Put each prefix in every live replica's prefix cache (or in `replicas`: a restarted
        one before it rejoins the rotation)."""
        if self.tokenizers is None or (replicas is None and not self.pool.alive):
            raise RuntimeError(self.pool.unavailable_reason())
        ids = await self.tokenizers.run(encode_prompts, prefixes, "prefixes")
        per_replica = await self.pool.warm(ids, replicas)
        return {"prefixes": len(prefixes), "cached_tokens": sum(per_replica), "replicas": per_replica}

    async def flush_cache(self) -> dict[str, Any]:
        return {"flushed_tokens": await self.pool.flush_cache()}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """200 while at least one replica serves (`degraded` when some are down); 503 while
        loading, draining (status "draining": new requests get 503 until `resume`) or down."""
        draining = self.pool.state == "draining"
        healthy = self.ready and self.pool.healthy and not draining
        if healthy:
            status = "ok"
        elif draining and self.ready and self.pool.alive:
            status = "draining"
        elif self.ready and self.pool.state == "ready" and self.pool.restarting:
            status = "restarting"  # no replica serves, one is coming back: retry
        else:
            status = "loading" if not self.ready and not self.startup_error else "unavailable"
        body: dict[str, Any] = {
            "status": status,
            "model": self.model_id,
            "degraded": self.pool.degraded,
            "replicas_alive": len(self.pool.alive),
            "replicas_total": len(self.pool.replicas),
            "warming": self.warming is not None and not self.warming.done(),
            "shutting_down": self.pool.shutting_down,
            "engines": [
                {"replica": r.index, "pid": r.client.pid, "state": r.state, "error": r.error,
                 "restarts": r.restarts, "last_death": r.last_death, "inflight": r.client.inflight,
                 "device": r.placement.device}
                for r in self.pool.replicas
            ],
        }
        if not healthy:
            body["reason"] = self.startup_error or self.pool.unavailable_reason()
        elif self.pool.degraded:
            body["reason"] = self.pool.unavailable_reason()
        return healthy, body

    def uptime_s(self) -> float:
        return time.time() - self.stats.started_at
