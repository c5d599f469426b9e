"""The control plane of a real server under abuse, over real ZeroMQ sockets: `drain` shows
in /health and `resume` undoes it; every argument of every built-in command is checked
(type and range) and a bad one is named in the error reply; every frame gets a reply,
whatever it holds (garbage, nesting deeper than the decoder goes, the wrong shapes)."""

from __future__ import annotations

import time

import httpx
import msgspec
import pytest
import zmq
from server_process import start_server_with_control

from minisgl.control.client import ControlClient
from minisgl.control.protocol import reply_decoder


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server_with_control(tiny_qwen3_path, log_dir=tmp_path_factory.mktemp("control-abuse"))
    yield srv
    srv.stop()


@pytest.fixture()
def control(server):
    with ControlClient(server.endpoint, timeout=30) as client:
        yield client


def _generate(url: str) -> httpx.Response:
    return httpx.post(url + "/generate", json={"prompt": "hi", "max_new_tokens": 2}, timeout=30)


def test_drain_shows_in_health_and_resume_undoes_it(control, server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    drained = control.call("drain", timeout=5)
    assert drained["draining"] is True and drained["inflight"] == 0
    health = httpx.get(server.url + "/health")
    assert health.status_code == 503, health.text
    assert health.json()["status"] == "draining" and "draining" in health.json()["reason"]
    refused = _generate(server.url)
    assert refused.status_code == 503 and "draining" in refused.json()["error"]["message"]

    resumed = control.call("resume")
    assert resumed["draining"] is False and resumed["state"] == "ready"
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert _generate(server.url).status_code == 200
    assert control.call("resume")["state"] == "ready"  # resuming a server that serves changes nothing


@pytest.mark.parametrize(("command", "args", "named"), [
    ("drain", {"timeout": "x"}, "timeout"),
    ("drain", {"timeout": -1}, "timeout"),
    ("drain", {"timeout": True}, "timeout"),
    ("drain", {"timeout": 1e9}, "timeout"),
    ("drain", {"timeout": [5]}, "timeout"),
    ("drain", {"timeout": {"nested": {"deeper": 1}}}, "timeout"),
    ("drain", {"timout": 5}, "timout"),
    ("warm", {"prefixes": 5}, "prefixes"),
    ("warm", {"prefixes": [""]}, "prefixes"),
    ("warm", {"prefixes": ["ok", 7]}, "prefixes"),
    ("warm", {"prefixes": []}, "prefixes"),
    ("warm", {}, "prefixes"),
    ("warm", {"prefixes": ["a"], "extra": 1}, "extra"),
    ("set_scheduler", {"name": 3}, "name"),
    ("set_scheduler", {"name": ""}, "name"),
    ("set_scheduler", {}, "name"),
    ("metrics", {"verbose": True}, "verbose"),
    ("flush_cache", {"all": 1}, "all"),
    ("resume", {"now": 1}, "now"),
])
def test_every_argument_is_checked_and_named(control, server, command, args, named):
    reply = control.request(command, **args)
    assert not reply.ok, reply
    assert f"'{named}'" in reply.error and "bad argument" in reply.error, reply.error
    # nothing happened: the server still serves, nothing is draining
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def _raw(server, *frames: bytes, timeout: float = 10.0) -> list[bytes] | None:
    """Send frames as they are from a DEALER; the reply's frames, or None if none came."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        sock.send_multipart(list(frames))
        if not sock.poll(int(timeout * 1000)):
            return None
        return sock.recv_multipart()
    finally:
        sock.close(linger=0)
        ctx.term()


def _nested(depth: int) -> bytes:
    """A msgpack control request whose args nest `depth` arrays deep (no encoder goes there)."""
    return b"\x82\xa7command\xa5drain\xa4args\x81\xa7timeout" + b"\x91" * depth + b"\x01"


@pytest.mark.parametrize("payload", [
    _nested(100_000),
    _nested(1_000),
    b"\xc1 not msgpack",
    b"",
    msgspec.msgpack.encode([1, 2, 3]),
    msgspec.msgpack.encode({"command": 5}),
    msgspec.msgpack.encode({"command": "metrics", "args": [1, 2]}),
    msgspec.msgpack.encode({"command": "metrics", "args": {"1": {"2": {"3": [{"4": b"\x00"}]}}}}),
    msgspec.msgpack.encode({"command": "warm", "args": {"prefixes": msgspec.msgpack.Ext(1, b"x")}}),
    msgspec.msgpack.encode({"command": "drain", "args": {"timeout": msgspec.msgpack.encode({"timeout": 5})}}),
    b"\x00" * (17 * 1024 * 1024),
], ids=["nested-100k", "nested-1k", "garbage", "empty", "array", "command-int", "args-array", "args-nested",
        "ext", "msgpack-in-msgpack", "17MiB"])
def test_every_frame_gets_a_reply(server, payload):
    frames = _raw(server, b"", payload)
    assert frames is not None, "no reply"
    reply = reply_decoder.decode(frames[-1])
    assert not reply.ok and reply.error
    with ControlClient(server.endpoint, timeout=10) as client:  # and the plane still serves
        assert client.call("metrics")["num_running_reqs"] == 0


def test_many_bad_frames_at_once_each_get_a_reply(server):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        sent = 200
        for i in range(sent):
            sock.send_multipart([b"", _nested(50_000) if i % 2 else b"\xc1"])
        got = 0
        deadline = time.monotonic() + 30
        while got < sent and time.monotonic() < deadline:
            if sock.poll(1000):
                sock.recv_multipart()
                got += 1
        assert got == sent
    finally:
        sock.close(linger=0)
        ctx.term()
