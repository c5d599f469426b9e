"""Injected faults are survived (MINISGL_TEST_FAULTS, minisgl.ipc.faults: nothing but a test
sets it): a forward that raises after N steps, an engine whose restart fails at load, a
grammar compile that raises. Every in-flight request ends with an error, not a hang;
nothing leaks (no request running, no KV held, no inflight slot); new requests are refused
with 503 or served after the restart; the server process itself never exits."""

from __future__ import annotations

import os
import signal

import httpx
from helpers import LONG, BackgroundPost, BackgroundStream, engines, health, sse_data, sse_json, wait_until
from server_process import start_server

FAST_RESTARTS = {"ENGINE_RESTART_LIMIT": "2", "ENGINE_RESTART_BACKOFF_S": "0.2"}
STREAM = {"prompt": "a very long story", "max_tokens": LONG, "stream": True, "ignore_eos": True}


def complete(url: str, **body) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 4, **body}, timeout=60)


def assert_nothing_leaks(url: str) -> None:
    m = httpx.get(url + "/metrics", timeout=30).json()
    assert m["num_running_reqs"] == 0 and m["num_waiting_reqs"] == 0 and m["kv_used_tokens"] == 0, m
    assert all(r["inflight"] == 0 for r in m["replicas"]), m["replicas"]  # the pool's slots
    assert all(e["inflight"] == 0 for e in engines(url)), engines(url)  # the engine client's routes


def test_a_forward_that_raises_fails_every_request_and_the_engine_comes_back(tiny_qwen3_path, tmp_path):
    faults = f"step_raise_after=40,once={tmp_path / 'raised'}"
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path, env={**FAST_RESTARTS, "MINISGL_TEST_FAULTS": faults})
    try:
        url = srv.url
        victim = engines(url)[0]["pid"]
        stream = BackgroundStream(url, "/v1/completions", STREAM)
        post = BackgroundPost(url, "/v1/completions", {"prompt": "another", "max_tokens": LONG, "ignore_eos": True})
        lines = sse_data(stream.join(120))
        assert lines[-1] == "data: [DONE]", lines[-3:]
        error = sse_json(lines[-2])["error"]
        # the engine's own report of the failure, or, when its exit is seen first, the exit
        assert error["code"] == "engine_unavailable" and any(
            why in error["message"] for why in ("injected fault", "exited")), error
        r = post.join(120)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text

        wait_until(lambda: health(url).status_code == 200, "/health 200 after the restart")
        entry = engines(url)[0]
        assert entry["restarts"] == 1 and entry["pid"] != victim, entry
        assert any(why in entry["last_death"] for why in ("injected fault", "exited")), entry
        assert complete(url).status_code == 200
        assert_nothing_leaks(url)
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_a_restart_that_fails_at_load_leaves_503s_and_a_running_server(tiny_qwen3_path, tmp_path):
    faults = f"load_raise,skip_first={tmp_path / 'first'}"
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path, env={**FAST_RESTARTS, "MINISGL_TEST_FAULTS": faults})
    try:
        url = srv.url
        stream = BackgroundStream(url, "/v1/completions", STREAM)
        stream.wait_started()
        os.kill(engines(url)[0]["pid"], signal.SIGKILL)
        lines = sse_data(stream.join(60))
        assert lines[-1] == "data: [DONE]" and "engine_unavailable" in lines[-2], lines[-3:]

        down = wait_until(lambda: (h := health(url)).json()["engines"][0]["state"] == "dead" and h,
                          "the replica given up after its restarts failed at load")
        assert down.status_code == 503
        assert "injected fault: the runner failed to load" in down.json()["reason"], down.json()
        assert "ENGINE_RESTART_LIMIT" in down.json()["reason"], down.json()
        r = complete(url)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        assert all(e["inflight"] == 0 for e in engines(url))
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_a_grammar_compile_that_raises_fails_that_request_only(tiny_qwen3_path, tmp_path):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path, env={**FAST_RESTARTS, "MINISGL_TEST_FAULTS": "grammar_raise"})
    try:
        url = srv.url
        pid = engines(url)[0]["pid"]
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "a number"}], "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}}})
        assert r.status_code == 500, r.text
        assert "injected fault: grammar compile failed" in r.json()["error"]["message"], r.text
        assert complete(url).status_code == 200
        entry = engines(url)[0]
        assert entry["pid"] == pid and entry["restarts"] == 0, entry
        assert_nothing_leaks(url)
    finally:
        srv.stop()


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(k) for k in f.read().split()]
    return kids


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def test_a_tokenizer_worker_that_dies_is_replaced_and_no_request_fails(tiny_qwen3_path, tmp_path):
    srv = start_server(tiny_qwen3_path, "--num-tokenizer", "1", log_dir=tmp_path)
    try:
        url = srv.url
        engine_pids = {e["pid"] for e in engines(url)}
        workers = [p for p in children(srv.proc.pid) if p not in engine_pids and "resource_tracker" not in cmdline(p)]
        assert len(workers) == 1, [(p, cmdline(p)) for p in workers]
        os.kill(workers[0], signal.SIGKILL)
        chat = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
        for _ in range(3):
            r = httpx.post(url + "/v1/chat/completions", json=chat, timeout=120)
            assert r.status_code == 200, r.text
        assert "a tokenizer worker process died" in srv.log(tail=None)
        assert_nothing_leaks(url)
        assert srv.proc.poll() is None
    finally:
        srv.stop()
