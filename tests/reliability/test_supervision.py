"""A dead engine comes back: the server's supervisor restarts a replica whose process died
(kill -9), with backoff, up to ENGINE_RESTART_LIMIT restarts in a row; the new process
loads, re-warms WARM_PREFIXES and rejoins the rotation. In-flight requests on the dead
replica still fail at once (an error event, then [DONE])."""

from __future__ import annotations

import os
import shutil
import signal

import httpx
from helpers import LONG, BackgroundStream, engines, health, sse_data, sse_json, wait_until
from server_process import start_server

WARM = "You are a helpful assistant. Answer briefly and politely."
STREAM = {"prompt": "a very long story", "max_tokens": LONG, "stream": True, "ignore_eos": True}


def complete(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 4}, timeout=60)


def kill_engine_under_a_stream(url: str, replica: int | None = None) -> tuple[dict, list[str]]:
    """Start a long stream, kill -9 the engine serving it; returns that engine's /health
    entry (before the kill) and the stream's data lines."""
    stream = BackgroundStream(url, "/v1/completions", STREAM)
    stream.wait_started()
    victim = next(e for e in engines(url) if e["inflight"] and (replica is None or e["replica"] == replica))
    os.kill(victim["pid"], signal.SIGKILL)
    return victim, sse_data(stream.join(60))


def assert_failed_with_error_event(lines: list[str], pid: int) -> None:
    assert lines[-1] == "data: [DONE]", lines[-3:]
    error = sse_json(lines[-2])["error"]
    assert error["type"] == "service_unavailable" and error["code"] == "engine_unavailable", error
    assert str(pid) in error["message"], error


def test_a_killed_engine_is_restarted_rewarmed_and_serves_again(tiny_qwen3_path, tmp_path):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path,
                       env={"ENGINE_RESTART_LIMIT": "1", "ENGINE_RESTART_BACKOFF_S": "0.5", "WARM_PREFIXES": WARM})
    try:
        url = srv.url
        assert engines(url)[0]["state"] == "ready"
        victim, lines = kill_engine_under_a_stream(url)
        assert_failed_with_error_event(lines, victim["pid"])

        # right after the death: 503 (retry), the replica says it is restarting and why
        down = health(url)
        assert down.status_code == 503, down.text
        body = down.json()
        assert body["status"] == "restarting", body
        entry = body["engines"][0]
        assert entry["state"] == "restarting" and "exited" in entry["error"], entry
        r = complete(url)
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready", r.text
        assert r.headers.get("retry-after") == "1"

        wait_until(lambda: health(url).status_code == 200, "/health 200 after the restart")
        entry = engines(url)[0]
        assert entry["state"] == "ready" and entry["restarts"] == 1 and entry["pid"] != victim["pid"], entry
        r = complete(url)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4
        m = httpx.get(url + "/metrics", timeout=30).json()
        assert m["replicas"][0]["kv_cached_tokens"] > 0  # WARM_PREFIXES went into the new process
        assert m["generation_tokens_total"] > 4  # counters keep what the dead process counted

        # ENGINE_RESTART_LIMIT=1: a second death in a row stays down, and /health says why
        victim, lines = kill_engine_under_a_stream(url)
        assert_failed_with_error_event(lines, victim["pid"])
        down = wait_until(lambda: (h := health(url)).json()["engines"][0]["state"] == "dead" and h, "the replica given up")
        assert down.status_code == 503
        assert "ENGINE_RESTART_LIMIT" in down.json()["reason"], down.json()
        assert complete(url).status_code == 503
        assert "restarting engine replica 0 (attempt 1/1" in srv.log(tail=None)
    finally:
        srv.stop()


def test_dp2_the_survivor_serves_while_the_killed_replica_restarts_and_rejoins(tiny_qwen3_path, tmp_path):
    srv = start_server(tiny_qwen3_path, "--dp-size", "2", log_dir=tmp_path, env={"ENGINE_RESTART_BACKOFF_S": "0.5"})
    try:
        url = srv.url
        victim, lines = kill_engine_under_a_stream(url)
        assert_failed_with_error_event(lines, victim["pid"])
        index = victim["replica"]

        h = health(url)
        assert h.status_code == 200 and h.json()["degraded"] is True, h.text  # the survivor serves
        assert h.json()["engines"][index]["state"] in ("restarting", "ready")
        for _ in range(3):
            assert complete(url).status_code == 200

        back = wait_until(lambda: (e := engines(url)[index])["state"] == "ready" and e, "the killed replica to rejoin")
        assert back["restarts"] == 1 and back["pid"] != victim["pid"]
        assert health(url).json()["degraded"] is False
        before = httpx.get(url + "/metrics", timeout=30).json()["replicas"][index]["requests_dispatched"]
        for _ in range(4):  # rr: the rejoined replica gets its share again
            assert complete(url).status_code == 200
        after = httpx.get(url + "/metrics", timeout=30).json()["replicas"][index]["requests_dispatched"]
        assert after >= before + 2
    finally:
        srv.stop()


def test_restart_limit_zero_leaves_a_dead_engine_down(tiny_qwen3_path, tmp_path):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path, env={"ENGINE_RESTART_LIMIT": "0"})
    try:
        url = srv.url
        victim, lines = kill_engine_under_a_stream(url)
        assert_failed_with_error_event(lines, victim["pid"])
        h = health(url)
        assert h.status_code == 503
        body = h.json()
        assert body["status"] == "unavailable" and body["engines"][0]["state"] == "dead", body
        assert body["engines"][0]["restarts"] == 0
        assert "ENGINE_RESTART_LIMIT=0" in body["reason"] and "exited" in body["reason"], body
        r = complete(url)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
    finally:
        srv.stop()


def test_restarts_that_fail_to_load_back_off_then_give_up(tiny_qwen3_path, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_qwen3_path, model)
    srv = start_server(str(model), log_dir=tmp_path, env={"ENGINE_RESTART_LIMIT": "2", "ENGINE_RESTART_BACKOFF_S": "0.2"})
    try:
        url = srv.url
        shutil.rmtree(model)  # every new engine process now fails to load
        pid = engines(url)[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        entry = wait_until(lambda: (e := engines(url)[0])["state"] == "dead" and e, "the replica given up", 180)
        assert entry["restarts"] == 2, entry
        h = health(url)
        assert h.status_code == 503
        reason = h.json()["reason"]
        assert "failed 3 times in a row (ENGINE_RESTART_LIMIT=2)" in reason, reason
        log = srv.log(tail=None)
        assert "restarting engine replica 0 (attempt 1/2 in 0.2s)" in log
        assert "restarting engine replica 0 (attempt 2/2 in 0.4s)" in log  # the backoff doubled
        assert "restart attempt 2 failed" in log
    finally:
        srv.stop()
