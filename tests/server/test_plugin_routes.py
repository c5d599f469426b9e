"""Routes a plugin registers through `minisgl_register_routes`: the server mounts them, and
one that cannot load or claims a path already served is reported against its plugin while
the server keeps every other route."""

from __future__ import annotations

from litestar import Litestar, get
from litestar.testing import TestClient

from minisgl.hookspecs import hookimpl
from minisgl.plugins import Registry
from minisgl.specs import RouteSpec
from minisgl_server.app import mount_plugin_routes
from minisgl_server.errors import EXCEPTION_HANDLERS


@get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "plugin"}


@get("/health")
async def fake_health() -> dict[str, str]:
    return {"status": "not mine"}


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def _plugin(name, factory):
    class Plugin:
        @hookimpl
        def minisgl_register_routes(self, register):
            register(RouteSpec(name=name, description="routes", factory=factory))

    return Plugin()


def test_plugin_routes_are_mounted_and_broken_ones_reported():
    registry = Registry()
    registry.add_plugin(_plugin("hello", lambda: [hello]), "good")
    registry.add_plugin(_plugin("gone", "no_such_module_anywhere:routes"), "missing")
    registry.add_plugin(_plugin("health", lambda: fake_health), "clash")
    registry.add_plugin(_plugin("number", lambda: 42), "not-a-route")
    assert registry.plugins["good"].registered == {"route": ["hello"]}
    app = Litestar(route_handlers=[health], exception_handlers=EXCEPTION_HANDLERS)
    mount_plugin_routes(app, registry)
    with TestClient(app) as client:
        assert client.get("/hello").json() == {"hello": "plugin"}
        assert client.get("/health").json() == {"status": "ok"}
    assert registry.plugins["good"].ok
    errors = {p.name: p.error for p in registry.failed()}
    assert set(errors) == {"missing", "clash", "not-a-route"}
    assert errors["missing"].startswith("route 'gone': ModuleNotFoundError")
    assert "/health already served" in errors["clash"]
    assert "ImproperlyConfiguredException" in errors["not-a-route"]
