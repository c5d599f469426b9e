"""The built-in control commands (registered by minisgl.builtin_plugins).

Each takes the serving process's control context, which offers:
  async metrics() -> dict, async warm(prefixes) -> dict, async flush_cache() -> dict,
  registry (the plugin Registry), set_scheduler(name) -> dict, async drain(timeout) -> dict
(minisgl_server.control_context.ServerControlContext is the server's)."""

from __future__ import annotations

from typing import Any


async def metrics(context: Any) -> dict[str, Any]:
    return await context.metrics()


async def warm(context: Any, prefixes: list[str] | str = ()) -> dict[str, Any]:
    if isinstance(prefixes, str):
        prefixes = [p for p in prefixes.split("||") if p]
    if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
        raise ValueError("warm needs 'prefixes': a list of non-empty strings")
    return await context.warm(prefixes)


async def flush_cache(context: Any) -> dict[str, Any]:
    return await context.flush_cache()


def plugins(context: Any) -> dict[str, Any]:
    registry = context.registry
    return {
        "plugins": [p.to_dict() | {"traceback": None} for p in registry.plugins.values()],
        "registered": {kind: registry.names(kind) for kind in registry.specs},
    }


def set_scheduler(context: Any, name: str) -> dict[str, Any]:
    return context.set_scheduler(name)


async def drain(context: Any, timeout: float = 600.0) -> dict[str, Any]:
    return await context.drain(timeout)
