"""Injected faults are survived (MINISGL_TEST_FAULTS, minisgl.ipc.faults: nothing but a test
sets it): a forward that raises after N steps, an engine whose restart fails at load, a
grammar compile that raises, a tokenizer worker that dies, a tensor-parallel rank that
exits. Every in-flight request ends with an error, not a hang;
nothing leaks (no request running, no KV held, no inflight slot); new requests are refused
with 503 or served after the restart; the server process itself never exits."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
from helpers import (
    FAST_RESTARTS,
    LONG,
    STREAM,
    TP2,
    BackgroundPost,
    BackgroundStream,
    assert_nothing_leaks,
    children,
    cmdline,
    complete,
    engines,
    health,
    served_again,
    spawned,
    sse_data,
    sse_json,
    wait_until,
)
from server_process import start_server


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

        served_again(url, victim, "injected fault", "exited")
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


def needs_cpu_tensor_parallel() -> None:
    pytest.importorskip("minisgl_backend_sgl", reason="backend-sgl is not installed: it runs --tp-size on the CPU")
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch has no gloo: backend-sgl's CPU tensor parallelism needs it")
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("finds the rank processes in /proc")


def test_a_tp_rank_that_exits_mid_step_fails_its_requests_at_once_and_the_engine_comes_back(tiny_qwen3_path, tmp_path):
    """Rank 1 exits as rank 0 enters a step's collectives: the step fails naming the rank
    and its exit code, well before the watchdog (300 s here) would have, and the restarted
    engine has new ranks."""
    needs_cpu_tensor_parallel()
    faults = f"tp_rank_exit=1:40,once={tmp_path / 'exited'}"
    srv = start_server(tiny_qwen3_path, *TP2, log_dir=tmp_path,
                       env={**FAST_RESTARTS, "WATCHDOG_TIMEOUT": "300", "MINISGL_TEST_FAULTS": faults})
    try:
        url = srv.url
        victim = engines(url)[0]["pid"]
        [rank1] = spawned(victim)
        stream = BackgroundStream(url, "/v1/completions", STREAM)
        post = BackgroundPost(url, "/v1/completions", {"prompt": "another", "max_tokens": LONG, "ignore_eos": True})
        lines = sse_data(stream.join(60))
        assert lines[-1] == "data: [DONE]", lines[-3:]
        error = sse_json(lines[-2])["error"]
        assert error["code"] == "engine_unavailable", error
        assert f"minisgl-tp1 died (rank 1, process {rank1}, exit code 3)" in error["message"], error
        r = post.join(60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text

        entry = served_again(url, victim, "rank 1")
        new_ranks = spawned(entry["pid"])
        assert len(new_ranks) == 1 and new_ranks[0] != rank1, new_ranks
        assert_nothing_leaks(url)
        assert srv.proc.poll() is None
    finally:
        srv.stop()
