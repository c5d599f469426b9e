"""The built-in control commands (registered by minisgl.builtin_plugins).

Each takes the serving process's control context, which offers:
  async metrics() -> dict, async warm(prefixes) -> dict, async flush_cache(tier) -> dict,
  async cache_stats() -> dict,
  registry (the plugin Registry), set_scheduler(name) -> dict, async drain(timeout) -> dict,
  async resume() -> dict
(minisgl_server.control_context.ServerControlContext is the server's).

The annotations are the contract: the control server checks every argument against them
(type and range) before a command runs, and answers an error naming the argument."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from ..cache.tiers import FlushTier

Prefix = Annotated[str, msgspec.Meta(min_length=1)]
# one warm call: at most this many prefixes (each is prefilled on every replica)
MAX_WARM_PREFIXES = 4096
Prefixes = Annotated[list[Prefix], msgspec.Meta(min_length=1, max_length=MAX_WARM_PREFIXES)] | Prefix
DrainTimeout = Annotated[float, msgspec.Meta(ge=0.0, le=86400.0)]  # seconds; at most a day
PolicyName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


async def metrics(context: Any) -> dict[str, Any]:
    return await context.metrics()


async def warm(context: Any, prefixes: Prefixes) -> dict[str, Any]:
    if isinstance(prefixes, str):  # `minisgl control warm "a||b"`, as WARM_PREFIXES
        prefixes = [p for p in prefixes.split("||") if p]
    if not prefixes:
        raise ValueError("warm needs 'prefixes': a list of non-empty strings")
    return await context.warm(prefixes)


async def flush_cache(context: Any, tier: FlushTier | None = None) -> dict[str, Any]:
    """tier: device, host, disk or all; omitted, the device cache and the host tier."""
    return await context.flush_cache(tier)


async def cache_stats(context: Any) -> dict[str, Any]:
    return await context.cache_stats()


def plugins(context: Any) -> dict[str, Any]:
    registry = context.registry
    return {
        "plugins": [p.to_dict() | {"traceback": None} for p in registry.plugins.values()],
        "registered": {kind: registry.names(kind) for kind in registry.specs},
    }


def set_scheduler(context: Any, name: PolicyName) -> dict[str, Any]:
    return context.set_scheduler(name)


async def drain(context: Any, timeout: DrainTimeout = 600.0) -> dict[str, Any]:
    return await context.drain(timeout)


async def resume(context: Any) -> dict[str, Any]:
    return await context.resume()
