"""One real server with two CPU engine replicas (--dp-size 2) and the pool's features:
per-replica /metrics, WARM_PREFIXES warming every replica in the background, cache_aware
against rr on a shared-prefix workload, both inflight caps (429 + Retry-After) and their
recovery, ADAPTIVE_MAX_NEW_TOKENS, and, last, a killed replica leaving the pool serving."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest
from server_process import start_server_with_control

from minisgl.control.client import ControlClient

WARM = ["You are a helpful assistant.", "Answer briefly and politely."]
TOPICS = ["The history of the Roman empire", "A field guide to alpine flowers",
          "Notes on compiler construction", "Recipes from a coastal village"]


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server_with_control(
        tiny_qwen3_path, "--dp-size", "2",
        log_dir=tmp_path_factory.mktemp("pool-server"),
        env={
            "WARM_PREFIXES": "||".join(WARM), "ASYNC_PREFILL_QUEUE": "1",
            "MAX_INFLIGHT_PER_ENGINE": "2", "MAX_INFLIGHT_TOTAL": "4",
            "ADAPTIVE_MAX_NEW_TOKENS": "1", "ADAPTIVE_MAX_INFLIGHT_THRESHOLD": "2",
            "ADAPTIVE_MAX_NEW_TOKENS_FACTOR": "0.5",
            "ENGINE_RESTART_LIMIT": "0",  # the killed replicas stay dead (tests/reliability covers restarts)
            # a slower device: a held stream's 4000 tokens outlast the checks made while it is held, even
            # when the client's socket buffers take the whole answer unread
            "MINISGL_TEST_FAULTS": "step_sleep_ms=4",
        },
    )
    yield srv
    srv.stop()


@pytest.fixture()
def control(server):
    with ControlClient(server.endpoint, timeout=60) as client:
        yield client


def metrics(server) -> dict:
    return httpx.get(server.url + "/metrics", timeout=30).json()


def wait_until(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def held_stream(server, n: int = 1) -> Iterator[None]:
    """A long streaming completion with `n` choices, holding its inflight slots until exit."""
    body = {"prompt": "a very long story", "max_tokens": 4000, "stream": True, "ignore_eos": True, "n": n}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as stream:
        assert stream.status_code == 200, stream.read()
        lines = stream.iter_lines()  # kept referenced: a collected line iterator closes the stream
        first = next(line for line in lines if line.startswith("data:"))
        assert '"choices"' in first, first
        yield


def wait_idle(server) -> None:
    wait_until(lambda: metrics(server)["num_inflight"] == 0, "the held streams to be released")


def complete(server, max_tokens: int = 2) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", json={"prompt": "hello", "max_tokens": max_tokens}, timeout=60)


def test_warm_prefixes_warm_every_replica_in_the_background(server):
    warmed = wait_until(lambda: [r["warmed_tokens"] for r in metrics(server)["replicas"]]
                        if all(r["warmed_tokens"] for r in metrics(server)["replicas"]) else None,
                        "WARM_PREFIXES in both replicas")
    assert len(warmed) == 2 and warmed[0] == warmed[1] > 0
    assert not httpx.get(server.url + "/health").json()["warming"]


def test_metrics_have_a_section_per_replica_and_the_totals(server):
    for _ in range(4):
        assert complete(server).status_code == 200
    m = metrics(server)
    assert m["dp_size"] == 2 and m["engines_alive"] == 2 and m["degraded"] is False
    replicas = m["replicas"]
    assert [r["index"] for r in replicas] == [0, 1]
    for r in replicas:
        for key in ("healthy", "inflight", "requests_dispatched", "num_running_reqs", "num_waiting_reqs",
                    "kv_total_tokens", "kv_used_tokens", "kv_cached_tokens", "cached_tokens_total", "warmed_tokens"):
            assert key in r, key
        assert r["healthy"] is True and r["requests_dispatched"] >= 2  # rr alternates
    for key in ("kv_total_tokens", "prompt_tokens_total", "generation_tokens_total", "cached_tokens_total"):
        assert m[key] == sum(r[key] for r in replicas), key
    text = httpx.get(server.url + "/metrics?format=prometheus").text
    assert 'minisgl:requests_dispatched_total{backend="hf",model=' in text
    for index in (0, 1):
        assert f'replica="{index}"' in text
    assert [line for line in text.splitlines() if line.startswith("minisgl:healthy") and 'replica="1"' in line]


def shared_prefix_workload(server) -> None:
    """Four topics, four questions each, sent one after the other: every question of a
    topic shares its long prefix."""
    for topic in TOPICS:
        prefix = f"{topic}: a long shared introduction that every question about it repeats word for word. "
        for q in range(4):
            body = {"text": prefix + f"Question {q}: what comes next?", "sampling_params": {"max_new_tokens": 2}}
            r = httpx.post(server.url + "/generate", json=body, timeout=60)
            assert r.status_code == 200, r.text


def cached_tokens_under(server, control, policy: str) -> tuple[int, list[int]]:
    """Cached prompt tokens the workload got under `policy`, in total and per replica."""
    assert control.call("set_scheduler", name=policy)["scheduler"] == policy
    assert control.call("flush_cache")["flushed_tokens"] >= 0
    assert all(r["tracked_prefix_tokens"] == 0 for r in metrics(server)["replicas"])  # the trackers forgot too
    before = metrics(server)
    shared_prefix_workload(server)
    after = metrics(server)
    per_replica = [a["cached_tokens_total"] - b["cached_tokens_total"]
                   for a, b in zip(after["replicas"], before["replicas"], strict=True)]
    total = after["cached_tokens_total"] - before["cached_tokens_total"]
    assert total == sum(per_replica)
    return total, per_replica


def test_cache_aware_gets_more_cached_tokens_than_rr(server, control):
    rr_total, rr_split = cached_tokens_under(server, control, "rr")
    aware_total, aware_split = cached_tokens_under(server, control, "cache_aware")
    print(f"cached tokens on the shared-prefix workload: rr {rr_total} {rr_split}, "
          f"cache_aware {aware_total} {aware_split}")
    # rr sends half of each topic's questions to the replica that has not seen the topic;
    # cache_aware sends them where the prefix is, so only each topic's first question misses
    assert aware_total > rr_total * 1.3


def test_set_scheduler_to_an_unknown_policy_is_an_error_reply(server, control):
    current = metrics(server)["scheduler"]
    reply = control.request("set_scheduler", name="least_busy")
    assert not reply.ok and "least_busy" in reply.error and "cache_aware" in reply.error
    assert metrics(server)["scheduler"] == current  # the policy in place stays


def test_per_engine_cap_answers_429_and_recovers(server, control):
    control.call("set_scheduler", name="rr")
    with ExitStack() as stack:
        stack.enter_context(held_stream(server))
        stack.enter_context(held_stream(server))
        assert [r["inflight"] for r in metrics(server)["replicas"]] == [1, 1]
        # two more fit the total cap (4) but neither replica's cap (2)
        busy = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 2}, timeout=30)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert "MAX_INFLIGHT_PER_ENGINE" in busy.json()["error"]["message"]
        assert complete(server).status_code == 200  # one more still fits
    wait_idle(server)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 2}, timeout=30)
    assert r.status_code == 200


def test_total_cap_answers_429_and_recovers(server, control):
    control.call("set_scheduler", name="rr")
    rejected_before = metrics(server)["requests_rejected_total"]
    with ExitStack() as stack:
        stack.enter_context(held_stream(server, n=2))
        stack.enter_context(held_stream(server, n=2))
        assert metrics(server)["num_inflight"] == 4
        busy = complete(server)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "rate_limit_exceeded"
        assert "MAX_INFLIGHT_TOTAL" in busy.json()["error"]["message"]
    wait_idle(server)
    assert complete(server).status_code == 200
    assert metrics(server)["requests_rejected_total"] == rejected_before + 1


def test_adaptive_max_new_tokens_scales_down_under_load(server):
    def generated(r: httpx.Response) -> int:
        assert r.status_code == 200, r.text
        return r.json()["usage"]["completion_tokens"]

    body = {"prompt": "count", "max_tokens": 8, "ignore_eos": True}
    idle = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert generated(idle) == 8  # below ADAPTIVE_MAX_INFLIGHT_THRESHOLD (2): untouched
    before = metrics(server)["adaptive_downscaled_total"]
    with held_stream(server), held_stream(server):
        loaded = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert generated(loaded) == 4  # 8 * ADAPTIVE_MAX_NEW_TOKENS_FACTOR (0.5)
    assert metrics(server)["adaptive_downscaled_total"] == before + 1
    wait_idle(server)


def test_a_killed_replica_leaves_the_pool_serving(server):
    """Last: it kills the module's replicas."""
    url = server.url
    body = {"prompt": "a very long story", "max_tokens": 4000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        victim = next(e for e in httpx.get(url + "/health").json()["engines"] if e["inflight"])
        os.kill(victim["pid"], signal.SIGKILL)
        rest = [line for line in lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2][len("data: "):])["error"]
    assert str(victim["pid"]) in error["message"] and "exited" in error["message"]

    health = httpx.get(url + "/health")
    assert health.status_code == 200
    body = health.json()
    assert body["degraded"] is True and body["replicas_alive"] == 1
    assert body["engines"][victim["replica"]]["state"] == "dead"
    assert f"engine replica {victim['replica']} is down" in body["reason"]

    for _ in range(4):  # every request goes to the survivor
        assert complete(server).status_code == 200
    m = metrics(server)
    dead, alive = m["replicas"][victim["replica"]], m["replicas"][1 - victim["replica"]]
    assert dead["healthy"] is False and dead["state"] == "dead" and dead["tracked_prefix_tokens"] == 0
    assert alive["healthy"] is True and m["engines_alive"] == 1 and m["degraded"] is True
    assert m["cached_tokens_total"] >= dead["cached_tokens_total"]  # counters keep what it had counted

    os.kill(alive["pid"], signal.SIGKILL)
    wait_until(lambda: httpx.get(url + "/health").status_code == 503, "/health 503 with no replica left")
    assert complete(server).status_code == 503
