"""The control server on its own (no engine): a plugin's command through the registry,
loopback-only endpoints, and CURVE authentication, over real ZeroMQ sockets."""

from __future__ import annotations

import asyncio
import threading

import pytest
from server_process import free_port

from minisgl.control.client import ControlClient, ControlError
from minisgl.control.security import ControlSecurityError, check_endpoint, create_curve_keys
from minisgl.control.server import ControlServer
from minisgl.hookspecs import hookimpl
from minisgl.plugins import Registry
from minisgl.specs import ControlCommandSpec


class EchoPlugin:
    @hookimpl
    def minisgl_register_control_commands(self, register):
        register(ControlCommandSpec(name="echo", description="echo the args back", factory=lambda ctx, **args: {"echo": args, "ctx": ctx}))
        register(ControlCommandSpec(name="explode", description="always fails", factory=lambda ctx: 1 / 0))


class Running:
    """A ControlServer on its own event loop thread."""

    def __init__(self, endpoint: str) -> None:
        registry = Registry()
        registry.add_plugin(EchoPlugin(), "echo-plugin")
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(endpoint, "the-context", registry)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.endpoint = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture()
def running():
    r = Running(f"tcp://127.0.0.1:{free_port()}")
    yield r
    r.stop()


def test_plugin_command_through_the_registry(running):
    with ControlClient(running.endpoint, timeout=10) as client:
        assert client.call("echo", a=1, b=[2, 3]) == {"echo": {"a": 1, "b": [2, 3]}, "ctx": "the-context"}
        reply = client.request("explode")
        assert not reply.ok and "ZeroDivisionError" in reply.error
        with pytest.raises(ControlError, match="unknown control command 'nope'"):
            client.call("nope")
        assert client.call("echo")["echo"] == {}  # still serving


def test_non_loopback_endpoints_need_explicit_opt_in(monkeypatch):
    check_endpoint("tcp://127.0.0.1:5557", environ={})
    check_endpoint("ipc:///tmp/minisgl-control", environ={})
    with pytest.raises(ControlSecurityError, match="ZMQ_CONTROL_ALLOW_REMOTE"):
        check_endpoint("tcp://0.0.0.0:5557", environ={})
    check_endpoint("tcp://0.0.0.0:5557", environ={"ZMQ_CONTROL_ALLOW_REMOTE": "1"})


def test_curve_admits_only_clients_with_keys(tmp_path, monkeypatch):
    keys = create_curve_keys(tmp_path / "curve")
    monkeypatch.setenv("ZMQ_CONTROL_CURVE_DIR", str(keys))
    r = Running(f"tcp://127.0.0.1:{free_port()}")
    try:
        with ControlClient(r.endpoint, timeout=10) as client:
            assert client.call("echo", x=1)["echo"] == {"x": 1}
        monkeypatch.delenv("ZMQ_CONTROL_CURVE_DIR")
        with ControlClient(r.endpoint, timeout=1) as plain, pytest.raises(ControlError, match="no reply"):
            plain.call("echo")
    finally:
        r.stop()
