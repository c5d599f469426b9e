"""The ZeroMQ control plane of a real server, over a real socket: the built-in commands,
WARM_PREFIXES at start, errors for unknown commands, and the `minisgl control` client."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from server_process import start_server_with_control

from minisgl.control.client import ControlClient


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server_with_control(
        tiny_qwen3_path,
        log_dir=tmp_path_factory.mktemp("server-control"),
        env={"WARM_PREFIXES": "You are a helpful assistant.||Answer briefly and politely."},
    )
    yield srv
    srv.stop()


@pytest.fixture()
def control(server):
    with ControlClient(server.endpoint, timeout=30) as client:
        yield client


def test_metrics_command(control):
    m = control.call("metrics")
    assert m["backend"] == "hf" and m["scheduler"] == "rr"
    assert m["num_running_reqs"] == 0 and m["kv_total_tokens"] > 0


def test_warm_prefixes_were_seeded_at_start(control):
    assert control.call("metrics")["kv_cached_tokens"] > 0


def test_warm_then_flush_cache(control):
    warmed = control.call("warm", prefixes=["The history of the Roman empire, chapter one."])
    assert warmed["cached_tokens"] > 0
    assert control.call("flush_cache")["flushed_tokens"] > 0
    assert control.call("metrics")["kv_cached_tokens"] == 0


def test_tier_commands_without_the_tiers(control):
    assert control.call("flush_cache", tier="device")["tier"] == "device"
    no_host = control.request("flush_cache", tier="host")
    assert not no_host.ok and "no host tier" in no_host.error and "--enable-hierarchical-cache" in no_host.error
    bad = control.request("flush_cache", tier="gpu")
    assert not bad.ok and "'tier'" in bad.error
    (replica,) = control.call("cache_stats")["replicas"]
    assert set(replica) >= {"replica", "model", "prompt_tokens", "device"} and "host" not in replica
    assert replica["device"]["hit_tokens"] >= 0 and 0.0 <= replica["device"]["hit_rate"] <= 1.0


def test_plugins_and_set_scheduler(control):
    plugins = control.call("plugins")
    assert "core" in [p["name"] for p in plugins["plugins"]]
    assert "rr" in plugins["registered"]["dispatch_policy"]
    assert control.call("set_scheduler", name="rr")["scheduler"] == "rr"
    bad = control.request("set_scheduler", name="no-such-policy")
    assert not bad.ok and "no-such-policy" in bad.error


def test_unknown_commands_and_bad_arguments_are_error_replies(control, server):
    reply = control.request("self_destruct")
    assert not reply.ok and "unknown control command" in reply.error
    reply = control.request("warm", nonsense=1)
    assert not reply.ok and "bad arguments" in reply.error
    reply = control.request("warm", prefixes=[1, 2])
    assert not reply.ok
    control._socket.send_multipart([b"", b"\xc1 not msgpack"])
    assert control._socket.poll(10000)
    assert b"malformed" in control._socket.recv_multipart()[-1]
    assert control.call("metrics")["num_running_reqs"] == 0  # still serving
    assert httpx.get(server.url + "/health").status_code == 200


def test_minisgl_control_cli(server):
    out = subprocess.run([sys.executable, "-m", "minisgl", "control", "--endpoint", server.endpoint, "metrics"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["scheduler"] == "rr"
    bad = subprocess.run([sys.executable, "-m", "minisgl", "control", "--endpoint", server.endpoint, "bogus"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "unknown control command" in bad.stderr


def test_drain_stops_admission(control, server):
    # last in this module: the server admits nothing afterwards
    assert control.call("drain", timeout=5)["inflight"] == 0
    r = httpx.post(server.url + "/generate", json={"prompt": "hi"}, timeout=10)
    assert r.status_code == 503 and "draining" in r.json()["error"]["message"]
