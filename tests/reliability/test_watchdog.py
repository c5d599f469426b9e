"""A stuck engine is caught: an engine process that is alive but finishes no step within
WATCHDOG_TIMEOUT while requests wait on it (stopped with SIGSTOP, or a forward that never
returns) is killed; its requests end with engine_unavailable (an error event and [DONE]
when streaming), /health says why, and the supervisor restarts it. A tensor-parallel rank
that is stopped holds rank 0 in a collective, which the same watchdog catches."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from helpers import (
    FAST_RESTARTS,
    STREAM,
    TP2,
    BackgroundPost,
    BackgroundStream,
    engines,
    gone,
    served_again,
    spawned,
    sse_data,
    sse_json,
    wait_until,
)
from server_process import start_server

WATCHED = {**FAST_RESTARTS, "WATCHDOG_TIMEOUT": "3"}


def test_a_stopped_engine_is_killed_and_restarted(tiny_qwen3_path, tmp_path):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path, env=WATCHED)
    try:
        url = srv.url
        stream = BackgroundStream(url, "/v1/completions", STREAM)
        stream.wait_started()
        victim = engines(url)[0]["pid"]
        os.kill(victim, signal.SIGSTOP)
        lines = sse_data(stream.join(60))
        assert lines[-1] == "data: [DONE]", lines[-3:]
        error = sse_json(lines[-2])["error"]
        assert error["code"] == "engine_unavailable" and "stuck" in error["message"], error
        assert "--watchdog-timeout 3" in error["message"], error
        wait_until(lambda: gone(victim), "the stopped engine process killed")
        served_again(url, victim, "stuck")
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_a_forward_that_never_returns_is_caught(tiny_qwen3_path, tmp_path):
    faults = f"step_hang_after=2,once={tmp_path / 'hung'}"
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path, env={**WATCHED, "MINISGL_TEST_FAULTS": faults})
    try:
        url = srv.url
        victim = engines(url)[0]["pid"]
        post = BackgroundPost(url, "/v1/completions", {"prompt": "hello", "max_tokens": 50, "ignore_eos": True})
        r = post.join(60)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "engine_unavailable" and "stuck" in r.json()["error"]["message"], r.text
        # /health says why while it restarts (or, once back, in last_death)
        entry = engines(url)[0]
        assert "stuck" in (entry["error"] or entry["last_death"] or ""), entry
        served_again(url, victim, "stuck")
        m = httpx.get(url + "/metrics", timeout=30).json()
        assert m["num_running_reqs"] == 0 and m["kv_used_tokens"] == 0, m
        assert engines(url)[0]["inflight"] == 0
    finally:
        srv.stop()


def test_an_idle_engine_is_not_stuck(tiny_qwen3_path, tmp_path):
    """Idle for longer than the timeout, with /metrics calling the engine every second: a
    quiet engine is not a stuck one."""
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path, env=WATCHED)
    try:
        url = srv.url
        pid = engines(url)[0]["pid"]
        time.sleep(2 * float(WATCHED["WATCHDOG_TIMEOUT"]))  # time passing is what is tested
        r = httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 8}, timeout=60)
        assert r.status_code == 200, r.text
        entry = engines(url)[0]
        assert entry["pid"] == pid and entry["restarts"] == 0 and entry["state"] == "ready", entry
        assert "stuck" not in srv.log(tail=None)
    finally:
        srv.stop()


def test_a_stopped_tp_rank_is_caught_and_leaves_no_rank_behind(tiny_qwen3_path, tmp_path):
    """Rank 1 stopped (SIGSTOP) holds rank 0 in a collective: the watchdog kills the engine,
    and the stopped rank dies with it (it could never poll for its parent)."""
    pytest.importorskip("minisgl_backend_sgl", reason="backend-sgl is not installed: it runs --tp-size on the CPU")
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("finds the rank processes in /proc")
    srv = start_server(tiny_qwen3_path, *TP2, log_dir=tmp_path, env=WATCHED)
    try:
        url = srv.url
        stream = BackgroundStream(url, "/v1/completions", STREAM)
        stream.wait_started()
        victim = engines(url)[0]["pid"]
        [rank1] = spawned(victim)
        os.kill(rank1, signal.SIGSTOP)
        lines = sse_data(stream.join(60))
        assert lines[-1] == "data: [DONE]", lines[-3:]
        error = sse_json(lines[-2])["error"]
        assert error["code"] == "engine_unavailable" and "stuck" in error["message"], error
        wait_until(lambda: gone(victim) and gone(rank1), "the engine and its stopped rank killed")
        served_again(url, victim, "stuck")
        assert srv.proc.poll() is None
    finally:
        srv.stop()
