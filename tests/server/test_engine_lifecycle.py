"""/health is 503 while loading, 200 when warmed, 503 after the engine process dies; the
inflight cap answers 429; a dead engine fails streams with an error event and new
requests with 503, fast."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
from server_process import ServerProcess


@pytest.fixture(scope="module")
def loading_server(tiny_qwen3_path, tmp_path_factory):
    """A server seen from its first second: records what it answered while loading."""
    # ENGINE_RESTART_LIMIT=0: the killed engine stays dead (tests/reliability covers restarts)
    srv = ServerProcess(tiny_qwen3_path, "--max-inflight-total", "1", log_dir=tmp_path_factory.mktemp("server-lifecycle"),
                        env={"ENGINE_RESTART_LIMIT": "0"})
    srv.while_loading = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not srv.while_loading:
        try:
            health = httpx.get(srv.url + "/health", timeout=2)
            gen = httpx.post(srv.url + "/generate", json={"prompt": "hi"}, timeout=5)
            srv.while_loading = [health, gen]
        except httpx.HTTPError:
            time.sleep(0.1)
    srv.wait_ready()
    yield srv
    srv.stop()


def test_health_is_503_until_loaded(loading_server):
    health, gen = loading_server.while_loading
    assert health.status_code == 503 and health.json()["status"] == "loading"
    assert gen.status_code == 503 and gen.json()["error"]["type"] == "service_unavailable"
    assert httpx.get(loading_server.url + "/health").status_code == 200


def test_inflight_cap_answers_429_then_engine_death_fails_fast(loading_server):
    url = loading_server.url
    body = {"prompt": "a very long story", "max_tokens": 100000 // 40, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert "choices" in first

        busy = httpx.post(url + "/v1/completions", json={"prompt": "me too", "max_tokens": 2}, timeout=10)
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "rate_limit_exceeded"

        pid = httpx.get(url + "/health").json()["engines"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        rest = [line for line in lines if line.startswith("data:")]
        assert time.monotonic() - started < 10
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2][len("data: "):])["error"]
    assert "exited" in error["message"] or "down" in error["message"]

    health = httpx.get(url + "/health")
    assert health.status_code == 503 and health.json()["engines"][0]["state"] == "dead"
    started = time.monotonic()
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 503 and time.monotonic() - started < 5
    assert r.json()["error"]["type"] == "service_unavailable"
    assert httpx.get(url + "/metrics").status_code == 200  # still answers, from the server's side
