"""SIGTERM drains: the server stops admitting (503 not_ready, /health "draining"), lets
in-flight requests finish for up to --drain-timeout, ends the rest with an error (an
error event then [DONE] on a stream, a JSON error otherwise), stops its engines, exits 0
and leaves no IPC directory behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from helpers import LONG, BackgroundPost, BackgroundStream, health, sse_data, sse_json, wait_until
from server_process import start_server


@pytest.fixture()
def ipc_tmp():
    """A short private TMPDIR for the server (ipc:// paths must stay under ~100 bytes), to
    see what it leaves there."""
    path = Path(tempfile.mkdtemp(prefix="msgl-rel-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def inflight(url: str) -> int:
    return sum(e["inflight"] for e in health(url).json()["engines"])


def wait_exit(srv, timeout: float = 60.0) -> int:
    try:
        return srv.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not exit in {timeout}s:\n{srv.log()}") from None


def test_sigterm_ends_what_the_drain_timeout_cut_short(tiny_qwen3_path, tmp_path, ipc_tmp):
    srv = start_server(tiny_qwen3_path, "--drain-timeout", "1", log_dir=tmp_path, env={"TMPDIR": str(ipc_tmp)})
    try:
        url = srv.url
        assert [p.name for p in ipc_tmp.iterdir() if p.name.startswith("minisgl-ipc-")], "the server uses ipc://"
        long = {"max_tokens": LONG, "ignore_eos": True}
        chat = BackgroundStream(url, "/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "a long story"}], "stream": True, **long})
        gen = BackgroundStream(url, "/generate", {"prompt": "a long story", "stream": True,
                                                  "sampling_params": {"max_new_tokens": LONG, "ignore_eos": True}})
        plain = BackgroundPost(url, "/v1/completions", {"prompt": "a long story", **long})
        chat.wait_started()
        gen.wait_started()
        wait_until(lambda: inflight(url) == 3, "three requests in flight")

        sent = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)

        lines = sse_data(chat.join(60))
        assert lines[-1] == "data: [DONE]", lines[-3:]
        error = sse_json(lines[-2])["error"]
        assert error["type"] == "service_unavailable" and error["code"] == "not_ready", error
        assert "shutting down" in error["message"], error
        assert all("choices" in sse_json(line) for line in lines[:-2])  # whole chunks before it

        rows = [json.loads(line) for line in gen.join(60)]
        assert rows[-2]["event"] == "error" and rows[-2]["error"]["code"] == "not_ready", rows[-3:]
        assert rows[-1] == {"event": "done", "finish_reason": "error"}

        r = plain.join(60)
        assert r.status_code == 503 and r.headers["content-type"].startswith("application/json"), r.text
        assert r.json()["error"]["code"] == "not_ready" and "shutting down" in r.json()["error"]["message"]

        assert wait_exit(srv) == 0, srv.log()
        assert time.monotonic() - sent < 30  # 1 s of drain, then the engines stop
        assert not list(ipc_tmp.iterdir()), list(ipc_tmp.iterdir())
        log = srv.log()
        assert "draining" in log and "3 request(s) still in flight" in log, log
    finally:
        srv.stop()


def test_sigterm_lets_running_requests_finish_within_the_drain_timeout(tiny_qwen3_path, tmp_path, ipc_tmp):
    srv = start_server(tiny_qwen3_path, "--drain-timeout", "120", log_dir=tmp_path, env={"TMPDIR": str(ipc_tmp)})
    try:
        url = srv.url
        # long enough to still run while the test looks at the draining server, short
        # enough to finish well inside the drain timeout
        stream = BackgroundStream(url, "/v1/completions",
                                  {"prompt": "a story", "max_tokens": 2000, "ignore_eos": True, "stream": True})
        plain = BackgroundPost(url, "/v1/completions", {"prompt": "a story", "max_tokens": 2000, "ignore_eos": True})
        stream.wait_started()
        wait_until(lambda: inflight(url) == 2, "two requests in flight")
        srv.proc.send_signal(signal.SIGTERM)

        draining = wait_until(lambda: (h := health(url)).json()["status"] == "draining" and h, "/health draining", 30)
        assert draining.status_code == 503
        if not plain.done.is_set():  # new requests are refused while the old ones finish
            r = httpx.post(url + "/v1/completions", json={"prompt": "late", "max_tokens": 2}, timeout=30)
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready", r.text
            assert "draining" in r.json()["error"]["message"]

        lines = sse_data(stream.join(120))
        assert lines[-1] == "data: [DONE]"
        assert sse_json(lines[-2])["choices"][0]["finish_reason"] == "length", lines[-2]
        r = plain.join(120)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 2000
        finished = time.monotonic()

        assert wait_exit(srv) == 0, srv.log()
        assert time.monotonic() - finished < 60  # the drain ended with its last request, not at 120 s
        assert not list(ipc_tmp.iterdir())
        assert "0 request(s) still in flight" in srv.log() or "drained" in srv.log()
    finally:
        srv.stop()


def test_a_killed_server_leaves_no_ipc_directory(tiny_qwen3_path, tmp_path, ipc_tmp):
    """kill -9 of the server process: its engine notices, exits, and removes the IPC dir."""
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path, env={"TMPDIR": str(ipc_tmp)})
    try:
        engine_pid = health(srv.url).json()["engines"][0]["pid"]
        assert list(ipc_tmp.iterdir())
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(30)

        def engine_gone() -> bool:  # gone, or a zombie nobody reaps (PID 1 in a container may not)
            try:
                return Path(f"/proc/{engine_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
            except (FileNotFoundError, ProcessLookupError):
                return True

        wait_until(engine_gone, "the orphaned engine to exit", 60)
        assert not list(ipc_tmp.iterdir()), list(ipc_tmp.iterdir())
    finally:
        srv.stop()


def test_a_second_sigint_ends_the_drain_at_once(tiny_qwen3_path, tmp_path, ipc_tmp):
    """Ctrl-C twice: the first drains (default timeout, 30 s), the second ends the drain now."""
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path, env={"TMPDIR": str(ipc_tmp)})
    try:
        url = srv.url
        stream = BackgroundStream(url, "/v1/completions",
                                  {"prompt": "a story", "max_tokens": LONG, "ignore_eos": True, "stream": True})
        stream.wait_started()
        srv.proc.send_signal(signal.SIGINT)
        wait_until(lambda: health(url).json()["status"] == "draining", "/health draining", 30)
        sent = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        lines = sse_data(stream.join(60))
        assert lines[-1] == "data: [DONE]" and sse_json(lines[-2])["error"]["code"] == "not_ready", lines[-3:]
        assert wait_exit(srv) == 0, srv.log()
        assert time.monotonic() - sent < 25  # not the 30 s drain timeout
        assert not list(ipc_tmp.iterdir())
        whole = srv.log(tail=None)
        assert "Traceback" not in whole and "Aborted" not in whole, srv.log()
    finally:
        srv.stop()
