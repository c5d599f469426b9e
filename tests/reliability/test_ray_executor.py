"""--distributed-executor ray: two CPU engine replicas as Ray actors on a local Ray cluster
(`ray start --head --num-cpus 2`), behind one real server on loopback, their data path over
tcp with the control plane's CURVE keys. They answer the official openai client,
cache_aware keeps a shared prefix on one replica, and a killed actor leaves the rotation at
once (its stream ends with an error event), is restarted by Ray and serves again. Without
Ray the flag says what to install."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from helpers import LONG, BackgroundStream, engines, sse_data, sse_json, wait_until
from server_process import free_port, start_server_with_control

from minisgl.control.client import ControlClient
from minisgl.control.security import create_curve_keys

pytest.importorskip("ray", reason="needs Ray: pip install 'minisgl-server[ray]'")

# a cluster of this test's own: no token file in $HOME, a small object store, no dashboard
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def ray_cli(*args: str) -> subprocess.CompletedProcess:
    ray = Path(sys.executable).with_name("ray")
    return subprocess.run([str(ray), *args], env={**os.environ, **RAY_ENV}, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ray_address():
    port = free_port()
    started = ray_cli("start", "--head", "--num-cpus", "2", "--port", str(port), "--include-dashboard", "false",
                      "--disable-usage-stats", "--object-store-memory", str(100 * 1024 * 1024))
    assert started.returncode == 0, started.stdout + started.stderr
    yield f"127.0.0.1:{port}"
    ray_cli("stop", "--force")


@pytest.fixture(scope="module")
def curve_keys(tmp_path_factory):
    return str(create_curve_keys(tmp_path_factory.mktemp("curve")))


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, ray_address, curve_keys, tmp_path_factory):
    srv = start_server_with_control(
        tiny_qwen3_path, "--dp-size", "2", "--distributed-executor", "ray",
        log_dir=tmp_path_factory.mktemp("ray-server"),
        env={**RAY_ENV, "RAY_ADDRESS": ray_address, "ENGINE_RESTART_BACKOFF_S": "0.2",
             "ZMQ_CONTROL_CURVE_DIR": curve_keys},
    )
    yield srv
    srv.stop()


def metrics(url: str) -> dict:
    return httpx.get(url + "/metrics", timeout=30).json()


def dispatched(url: str) -> list[int]:
    return [r["requests_dispatched"] for r in metrics(url)["replicas"]]


def test_both_replicas_are_ray_actors_and_answer_the_openai_client(server, ray_address, tiny_qwen3_path):
    log = server.log(tail=None)
    assert f"Ray: joined the cluster at {ray_address}" in log, log[-3000:]
    assert "Ray: engines connect over CURVE" in log
    listed = engines(server.url)
    assert [e["state"] for e in listed] == ["ready", "ready"]
    assert all(e["node"].startswith("ray node ") and e["device"] == "cpu" for e in listed), listed
    assert listed[0]["pid"] != listed[1]["pid"] != os.getpid()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    before = dispatched(server.url)
    for i in range(4):
        answer = client.completions.create(model=tiny_qwen3_path, prompt=f"hello {i}", max_tokens=4, temperature=0)
        assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 4
    after = dispatched(server.url)
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2]  # rr over both actors
    text = httpx.get(server.url + "/metrics?format=prometheus", timeout=30).text
    assert 'node="ray node ' in text and 'replica="1"' in text


def test_cache_aware_keeps_a_shared_prefix_on_one_replica(server, curve_keys, monkeypatch):
    monkeypatch.setenv("ZMQ_CONTROL_CURVE_DIR", curve_keys)  # the control plane shares the keys
    with ControlClient(server.endpoint, timeout=60) as control:
        assert control.call("set_scheduler", name="cache_aware")["scheduler"] == "cache_aware"
        try:
            for topic in ("The history of the Roman empire", "Notes on compiler construction"):
                prefix = f"{topic}: a long shared introduction that every question about it repeats word for word. "
                before = dispatched(server.url)
                for q in range(3):
                    body = {"text": prefix + f"Question {q}?", "sampling_params": {"max_new_tokens": 2}}
                    assert httpx.post(server.url + "/generate", json=body, timeout=60).status_code == 200
                delta = sorted(a - b for a, b in zip(dispatched(server.url), before, strict=True))
                assert delta == [0, 3], (topic, delta)
        finally:
            control.call("set_scheduler", name="rr")


def test_a_killed_actor_leaves_rotation_at_once_and_ray_brings_it_back(server):
    url = server.url
    stream = BackgroundStream(url, "/v1/completions",
                              {"prompt": "a very long story", "max_tokens": LONG, "stream": True, "ignore_eos": True})
    stream.wait_started()
    victim = next(e for e in engines(url) if e["inflight"])
    os.kill(victim["pid"], signal.SIGKILL)
    lines = sse_data(stream.join(60))
    assert lines[-1] == "data: [DONE]", lines[-3:]
    error = sse_json(lines[-2])["error"]
    assert error["code"] == "engine_unavailable" and str(victim["pid"]) in error["message"], error

    # the other actor keeps serving every request while the dead one is away
    for _ in range(4):
        r = httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, r.text

    back = wait_until(lambda: next((e for e in engines(url) if e["replica"] == victim["replica"]
                                    and e["state"] == "ready" and e["pid"] != victim["pid"]), None),
                      "Ray to restart the actor and the pool to put it back", timeout=120)
    assert back["restarts"] >= 1 and back["node"].startswith("ray node "), back
    before = dispatched(url)[victim["replica"]]
    for _ in range(4):
        assert httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60).status_code == 200
    assert dispatched(url)[victim["replica"]] > before  # the restarted actor serves again


def test_without_ray_the_flag_says_what_to_install(tiny_qwen3_path, tmp_path):
    shadow = tmp_path / "ray"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "minisgl", "serve", "--model-path", tiny_qwen3_path, "--port", str(free_port()),
         "--dp-size", "2", "--distributed-executor", "ray"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--distributed-executor ray needs Ray: pip install 'minisgl-server[ray]'" in done.stderr, done.stderr


def test_a_bad_executor_names_the_flag(tiny_qwen3_path):
    done = subprocess.run([sys.executable, "-m", "minisgl", "serve", "--model-path", tiny_qwen3_path,
                           "--distributed-executor", "slurm"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--distributed-executor" in done.stderr and "slurm" in done.stderr, done.stderr

