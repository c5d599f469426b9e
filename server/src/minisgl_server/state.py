"""Everything one server process holds: settings, the plugin registry, the engine pool,
the tokenizer (once the engines are ready), stats, and the startup sequence."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from minisgl.ipc.client import EngineClient
from minisgl.ipc.protocol import EngineReady
from minisgl.plugins import Registry
from minisgl.settings import Settings

from .engine_pool import EnginePool
from .stats import ServerStats
from .tokenization import TokenizerService

log = logging.getLogger("minisgl.server")


class ServerState:
    def __init__(self, settings: Settings, sources: dict[str, str], registry: Registry) -> None:
        self.settings = settings
        self.sources = sources
        self.registry = registry
        self.pool = EnginePool(settings, registry)
        self.stats = ServerStats(settings.metric_window)
        self.tokenizer: TokenizerService | None = None
        self.info: EngineReady | None = None
        self.ready = False
        self.startup_error: str | None = None
        self.request_shutdown: Callable[[], None] = lambda: None
        self.control: Any = None

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

    async def start(self) -> None:
        """Start the engines, load the tokenizer, warm WARM_PREFIXES, then say ready.
        A failure is logged and shuts the server down (exit status 1)."""
        # import transformers while the engine loads, so the tokenizer is quick after "ready"
        # (a daemon thread: a failed start must not wait for it at exit)
        threading.Thread(target=importlib.import_module, args=("transformers",), daemon=True).start()
        try:
            infos = await self.pool.start(on_death=self._on_engine_death)
            self.info = infos[0]
            log.info(
                "model %s (%s) on backend %r: %s; context %d tokens; %d replica(s), loaded in %.1fs",
                self.info.model_name, self.info.model_path, self.info.backend, self.info.backend_reason,
                self.info.max_context_len, len(infos), max(i.load_seconds for i in infos),
            )
            self.tokenizer = await asyncio.to_thread(TokenizerService, self.info.model_path, self.settings.trust_remote_code)
        except Exception as exc:
            self.startup_error = f"{type(exc).__name__}: {exc}"
            log.error("server startup failed: %s", self.startup_error)
            self.request_shutdown()
            return
        if self.settings.warm_prefixes:
            try:
                result = await self.warm(self.settings.warm_prefixes)
                log.info("WARM_PREFIXES: %d prefixes, %s tokens cached", len(self.settings.warm_prefixes), result["cached_tokens"])
            except Exception as exc:  # a cold cache is slower, not broken
                log.warning("WARM_PREFIXES failed: %s: %s", type(exc).__name__, exc)
        self.ready = True
        log.info("ready: /health answers 200 (scheduler %s)", self.pool.policy_name)

    def _on_engine_death(self, client: EngineClient) -> None:
        log.error("engine replica %d died; /health answers 503 and its requests fail", client.replica)

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.stop()
        await self.pool.stop()

    # ---- operations shared by HTTP routes and control commands ---------------------------
    async def warm(self, prefixes: list[str]) -> dict[str, Any]:
        if self.tokenizer is None or not self.pool.alive:
            raise RuntimeError(self.pool.unavailable_reason())
        ids = [self.tokenizer.encode(p) for p in prefixes]
        results = await self.pool.call_all("warm", token_id_lists=ids, timeout=300)
        return {"prefixes": len(prefixes), "cached_tokens": sum(int(r or 0) for r in results)}

    async def flush_cache(self) -> dict[str, Any]:
        results = await self.pool.call_all("flush_cache")
        return {"flushed_tokens": sum(int(r or 0) for r in results)}

    def health(self) -> tuple[bool, dict[str, Any]]:
        healthy = self.ready and self.pool.healthy
        body: dict[str, Any] = {
            "status": "ok" if healthy else ("loading" if not self.ready and not self.startup_error else "unavailable"),
            "model": self.model_id,
            "engines": [
                {"replica": c.replica, "pid": c.pid, "state": c.state, "error": c.error, "inflight": c.inflight}
                for c in self.pool.clients
            ],
        }
        if not healthy:
            body["reason"] = self.startup_error or self.pool.unavailable_reason()
        return healthy, body

    def uptime_s(self) -> float:
        return time.time() - self.stats.started_at
