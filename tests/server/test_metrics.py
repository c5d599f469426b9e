"""/metrics against a known workload on a real server with two replicas: the token
counters, the latency histograms and the answers by finish reason count exactly what was
sent; Prometheus families are per replica or server-wide, never both (sum() counts each
thing once); /health names the device the engines resolved. Then the server's rolling
throughput (tokens over wall time) and the quiet metrics refresh while an engine is busy."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_process import start_server

from minisgl_server import stats as stats_module
from minisgl_server.engine_pool import EnginePool
from minisgl_server.stats import ServerStats

N, M = 4, 5  # requests (one of them with n=2) of M tokens each


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, "--dp-size", "2", log_dir=tmp_path_factory.mktemp("metrics-server"))
    yield srv
    srv.stop()


def prometheus(server) -> dict[str, list]:
    text = httpx.get(server.url + "/metrics?format=prometheus", timeout=30).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families, name: str, suffix: str = "", **labels: str) -> float:
    family = families[name]
    values = [s.value for s in family.samples if s.name == name + suffix
              and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(values)


@pytest.fixture(scope="module")
def workload(server, tiny_qwen3_path):
    """The metrics before and after N requests (one asks n=2), sent at once."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    before_json, before = httpx.get(server.url + "/metrics", timeout=30).json(), prometheus(server)

    def one(i: int):
        return client.completions.create(model=tiny_qwen3_path, prompt=f"count {i}", max_tokens=M, temperature=0,
                                         n=2 if i == 0 else 1, extra_body={"ignore_eos": True})

    with ThreadPoolExecutor(N) as pool:
        answers = list(pool.map(one, range(N)))
    assert all(c.finish_reason == "length" for a in answers for c in a.choices)
    return before_json, before, httpx.get(server.url + "/metrics", timeout=30).json(), prometheus(server)


def test_token_counters_and_finish_reasons_count_the_workload(workload):
    before_json, before, after_json, after = workload
    answers = N + 1  # the n=2 request gives two
    assert after_json["generation_tokens_total"] - before_json["generation_tokens_total"] == answers * M
    got = {k: v - before_json["requests_by_finish_reason"].get(k, 0) for k, v in after_json["requests_by_finish_reason"].items()}
    assert {k: v for k, v in got.items() if v} == {"length": answers}
    name = "minisgl:request_success"
    assert sample(after, name, "_total", finished_reason="length") - sample(before, name, "_total", finished_reason="length") == answers
    # per-replica series add up to the JSON's total
    gen = "minisgl:generation_tokens"
    assert sample(after, gen, "_total") == after_json["generation_tokens_total"]
    assert sample(after, gen, "_total") - sample(before, gen, "_total") == answers * M


@pytest.mark.parametrize("name", ["minisgl:time_to_first_token_seconds", "minisgl:time_per_output_token_seconds",
                                  "minisgl:e2e_request_latency_seconds", "minisgl:request_queue_time_seconds"])
def test_each_latency_histogram_counts_every_request(workload, name):
    _, before, _, after = workload
    assert after[name].type == "histogram"
    assert sample(after, name, "_count") - sample(before, name, "_count") == N
    inf = [s for s in after[name].samples if s.name == name + "_bucket" and s.labels["le"] == "+Inf"]
    assert [s.value for s in inf] == [sample(after, name, "_count")]
    assert sample(after, name, "_sum") >= sample(before, name, "_sum")


def test_inter_token_latency_counts_every_gap_between_tokens(workload):
    _, before, _, after = workload
    name = "minisgl:inter_token_latency_seconds"
    assert sample(after, name, "_count") - sample(before, name, "_count") == (N + 1) * (M - 1)


def test_no_family_has_both_a_total_and_per_replica_samples(workload):
    _, _, after_json, after = workload
    per_replica = set()
    for family in after.values():
        with_replica = {"replica" in s.labels for s in family.samples}
        assert len(with_replica) <= 1, (family.name, family.samples)
        if with_replica == {True}:
            per_replica.add(family.name)
            assert {s.labels["replica"] for s in family.samples} == {"0", "1"}, family.name
        assert family.documentation and family.documentation != family.name.removeprefix("minisgl:").replace("_", " "), family.name
    # vLLM's names for the engine's gauges, per replica; the server's own figures without a replica
    assert {"minisgl:num_requests_running", "minisgl:num_requests_waiting", "minisgl:kv_cache_usage_perc",
            "minisgl:num_running_reqs", "minisgl:generation_tokens", "minisgl:prompt_tokens"} <= per_replica
    assert "minisgl:requests" not in per_replica and "minisgl:throughput_tokens_per_s" not in per_replica
    assert all(0 <= s.value <= 1 for s in after["minisgl:kv_cache_usage_perc"].samples)
    assert all(s.labels["model_name"] == after_json["model"] for f in after.values() for s in f.samples)


def test_health_names_the_resolved_device(server):
    body = httpx.get(server.url + "/health", timeout=30).json()
    assert [e["device"] for e in body["engines"]] == ["cpu", "cpu"]
    metrics = httpx.get(server.url + "/metrics", timeout=30).json()
    assert [r["device"] for r in metrics["replicas"]] == ["cpu", "cpu"]


def test_throughput_is_tokens_over_the_wall_time_the_window_spans(monkeypatch):
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(stats_module.time, "time", lambda: clock.now)
    stats = ServerStats(window=8)
    # two requests of 10 tokens side by side, one second each: 20 tokens in one second of wall time
    clock.now = 101.0
    for _ in range(2):
        stats.record_request(latency_s=1.0, ttft_s=0.1, completion_tokens=10, prompt_tokens=3, cached_tokens=0,
                             aborted=False, finish_reasons=["length"])
    rolling = stats.rolling()
    assert rolling["throughput_tokens_per_s"] == pytest.approx(20.0)
    assert rolling["avg_tokens_per_s"] == pytest.approx(10.0)  # what one client sees
    # a third request a second later: 30 tokens over the two seconds from the first arrival
    clock.now = 102.0
    stats.record_request(latency_s=0.5, ttft_s=0.1, completion_tokens=10, prompt_tokens=3, cached_tokens=0,
                         aborted=False, finish_reasons=["stop"])
    assert stats.rolling()["throughput_tokens_per_s"] == pytest.approx(15.0)
    assert stats.finished_by_reason == {"length": 2, "stop": 1}


def test_a_busy_engine_is_no_warning_and_a_failure_says_why(caplog):
    def replica(index: int, answer: BaseException):
        async def call(*_args, **_kwargs):
            raise answer
        return SimpleNamespace(index=index, client=SimpleNamespace(call=call))

    busy, broken = replica(0, TimeoutError()), replica(1, RuntimeError("decode failed"))
    pool = SimpleNamespace(alive=[busy, broken], replicas=[busy, broken])
    with caplog.at_level(logging.WARNING, logger="minisgl.server"):
        assert asyncio.run(EnginePool.refresh_load(pool)) == [None, None]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["engine replica 1: metrics unavailable: RuntimeError: decode failed"]
