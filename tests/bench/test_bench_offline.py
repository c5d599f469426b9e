"""`minisgl bench offline` end to end on a tiny model: every system produces the workload's
exact output tokens (EOS ignored), the JSON has the ratios and the floor, the plot is a PNG.
Behaviour only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENCH_HF_CONCURRENCY": "2"}
    return subprocess.run([sys.executable, "-m", "minisgl", "bench", "offline", *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_bench_runs_minisgl_and_every_peer(tiny_qwen3_path, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_bench("--model", tiny_qwen3_path, "--num-requests", "4", "--input-len", "5-12",
                       "--output-len", "3-6", "--dtype", "float32", "--output", str(out), "--plot", str(png))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    systems = [r["system"] for r in data["results"]]
    assert systems == ["minisgl", "hf-sequential", "hf-streaming(x2)", "hf-cb"]
    expected = data["workload"]["output_tokens"]
    assert all(r["output_tokens"] == expected for r in data["results"])
    assert set(data["ratios"]) == set(systems[1:]) and all(v > 0 for v in data["ratios"].values())
    assert data["compute_floor"]["seconds"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "minisgl speed-up" in result.stdout


def test_bench_rejects_bad_ranges_and_peers(tiny_qwen3_path):
    bad_range = run_bench("--model", tiny_qwen3_path, "--input-len", "300-50")
    assert bad_range.returncode == 2 and "--input-len" in bad_range.stderr
    bad_peer = run_bench("--model", tiny_qwen3_path, "--peers", "vllm")
    assert bad_peer.returncode == 2 and "--peers" in bad_peer.stderr
