"""Small helpers for the reliability tests: polling with deadlines (never fixed sleeps that
assume a fast machine), reading streams in the background, and the checks every fault test
makes once an engine died (it came back, serves, and nothing leaked)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

LONG = 4000  # tokens: a request that is still running whatever the machine's speed
STREAM = {"prompt": "a very long story", "max_tokens": LONG, "stream": True, "ignore_eos": True}
FAST_RESTARTS = {"ENGINE_RESTART_LIMIT": "2", "ENGINE_RESTART_BACKOFF_S": "0.2"}
# backend-sgl's tensor parallelism on the CPU: two gloo ranks
TP2 = ("--backend", "sgl", "--device", "cpu", "--tp-size", "2")


def wait_until(predicate: Callable[[], T], what: str, timeout: float = 120.0, every: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError as exc:  # the server may be busy restarting an engine
            value, last = None, exc
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def health(url: str) -> httpx.Response:
    return httpx.get(url + "/health", timeout=10)


def engines(url: str) -> list[dict[str, Any]]:
    return health(url).json()["engines"]


def complete(url: str, **body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 4, **body}, timeout=60)


def served_again(url: str, old_pid: int, *why: str) -> dict[str, Any]:
    """The engine that died (process `old_pid`) was restarted once, /health says it died for
    one of `why`, and it serves a request. Returns its /health entry."""
    wait_until(lambda: health(url).status_code == 200, "/health 200 after the restart")
    entry = engines(url)[0]
    assert entry["state"] == "ready" and entry["restarts"] == 1 and entry["pid"] != old_pid, entry
    assert any(w in entry["last_death"] for w in why), entry
    r = complete(url)
    assert r.status_code == 200, r.text
    return entry


def assert_nothing_leaks(url: str) -> None:
    m = httpx.get(url + "/metrics", timeout=30).json()
    assert m["num_running_reqs"] == 0 and m["num_waiting_reqs"] == 0 and m["kv_used_tokens"] == 0, m
    assert all(r["inflight"] == 0 for r in m["replicas"]), m["replicas"]  # the pool's slots
    assert all(e["inflight"] == 0 for e in engines(url)), engines(url)  # the engine client's routes


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(k) for k in f.read().split()]
    return kids


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def spawned(pid: int) -> list[int]:
    """Processes `pid` started with multiprocessing's spawn (an engine's TP ranks), not its
    resource tracker."""
    return [c for c in children(pid) if "spawn_main" in (line := cmdline(c)) and "resource_tracker" not in line]


def gone(pid: int) -> bool:
    """The process ended (a zombie nobody reaped yet counts: it holds no memory)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def sse_data(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("data:")]


def sse_json(line: str) -> dict[str, Any]:
    return json.loads(line[len("data: "):])


class BackgroundStream:
    """A streaming POST read to its end in a thread; `started` is set once the first chunk
    of the answer has arrived (so the request is running in the engine)."""

    def __init__(self, url: str, path: str, body: dict[str, Any], timeout: float = 180.0) -> None:
        self.lines: list[str] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url + path, body, timeout), daemon=True)
        self._thread.start()

    def _run(self, url: str, body: dict[str, Any], timeout: float) -> None:
        try:
            with httpx.stream("POST", url, json=body, timeout=timeout) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.strip():
                        self.lines.append(line)
                        if len(self.lines) >= 2:
                            self.started.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()
            self.done.set()

    def wait_started(self, timeout: float = 120.0) -> None:
        assert self.started.wait(timeout), "the stream never started"
        assert self.error is None, self.error
        assert self.status == 200, (self.status, self.lines)

    def join(self, timeout: float = 120.0) -> list[str]:
        assert self.done.wait(timeout), f"the stream did not end in {timeout}s: {self.lines[-3:]}"
        assert self.error is None, f"the stream broke: {self.error!r}; last lines {self.lines[-3:]}"
        return self.lines


class BackgroundPost:
    """A non-streaming POST in a thread."""

    def __init__(self, url: str, path: str, body: dict[str, Any], timeout: float = 180.0) -> None:
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url + path, body, timeout), daemon=True)
        self._thread.start()

    def _run(self, url: str, body: dict[str, Any], timeout: float) -> None:
        try:
            self.response = httpx.post(url, json=body, timeout=timeout)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float = 120.0) -> httpx.Response:
        assert self.done.wait(timeout), f"the request did not end in {timeout}s"
        assert self.error is None, f"the request broke: {self.error!r}"
        assert self.response is not None
        return self.response
