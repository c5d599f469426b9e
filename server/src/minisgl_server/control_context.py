"""What the control plane's commands can do to this server (minisgl.control.commands)."""

from __future__ import annotations

from typing import Any

from minisgl.plugins import Registry

from .metrics import collect_metrics


class ServerControlContext:
    def __init__(self, state: Any) -> None:
        self.state = state

    @property
    def registry(self) -> Registry:
        return self.state.registry

    @property
    def settings(self) -> Any:
        return self.state.settings

    async def metrics(self) -> dict[str, Any]:
        return await collect_metrics(self.state)

    async def warm(self, prefixes: list[str]) -> dict[str, Any]:
        return await self.state.warm(prefixes)

    async def flush_cache(self, tier: str | None = None) -> dict[str, Any]:
        return await self.state.flush_cache(tier)

    async def cache_stats(self) -> dict[str, Any]:
        return await self.state.cache_stats()

    def set_scheduler(self, name: str) -> dict[str, Any]:
        # an unknown or broken policy raises SchedulerError (a ValueError): an error reply
        # naming the installed policies; the current policy stays in place
        return self.state.set_scheduler(name)

    async def drain(self, timeout: float) -> dict[str, Any]:
        return await self.state.drain(timeout)

    async def resume(self) -> dict[str, Any]:
        return self.state.resume()
