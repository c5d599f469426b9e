"""`minisgl bench offline` end to end on a tiny model: every system produces the workload's
exact output tokens (EOS ignored), the JSON has the ratios and the floor, the plot is a PNG.
Behaviour only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


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
    roof = data["roofline_floor"]
    assert roof["bandwidth_bytes_per_s"] > 0 and roof["matmul_flops"] > 0 and 0 < roof["minisgl_efficiency"]
    assert "of roofline floor" in " ".join(result.stdout.split())  # rich wraps lines at 80 columns
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "minisgl speed-up" in result.stdout


def test_bench_rejects_bad_ranges_and_peers(tiny_qwen3_path):
    bad_range = run_bench("--model", tiny_qwen3_path, "--input-len", "300-50")
    assert bad_range.returncode == 2 and "--input-len" in bad_range.stderr
    bad_peer = run_bench("--model", tiny_qwen3_path, "--peers", "vllm")
    assert bad_peer.returncode == 2 and "--peers" in bad_peer.stderr


def test_w1_draws_input_lengths_then_output_lengths_from_seed_0():
    import random

    from minisgl_bench.offline import make_w1

    wl = make_w1(vocab_size=1000, special_below=10)
    rng = random.Random(0)
    assert [len(p) for p in wl.prompts] == [rng.randint(100, 1024) for _ in range(256)]
    assert wl.output_lens == [rng.randint(100, 1024) for _ in range(256)]
    assert all(10 <= t < 1000 for p in wl.prompts for t in p)


def test_the_roofline_floor_is_the_slower_of_bytes_and_flops_per_step():
    from minisgl_bench.roofline import Ceilings, ModelShape, roofline_floor

    shape = ModelShape(layers=1, hidden=8, heads=1, head_dim=8, params=1e9, lm_head_params=1e8, weight_bytes=2e9,
                       kv_bytes_per_token=1e6)
    # one request: prompt 10, 3 output tokens (the first from the prefill, then 2 decode steps at contexts 11, 12)
    memory_bound = roofline_floor(shape, [10], [3], Ceilings("x", bandwidth=1e12, flops=1e15))
    attention = [4.0 * 8 * c for c in (11, 12)]
    assert memory_bound.decode_steps == 2 and memory_bound.decode_bytes_bound_steps == 2
    assert memory_bound.decode_seconds == pytest.approx((2e9 + 11e6) / 1e12 + (2e9 + 12e6) / 1e12)
    assert memory_bound.prefill_seconds == pytest.approx((2e9 * 10 + 4.0 * 8 * 10 * 10 / 2) / 1e15)
    compute_bound = roofline_floor(shape, [10], [3], Ceilings("x", bandwidth=1e15, flops=1e12))
    assert compute_bound.decode_bytes_bound_steps == 0
    assert compute_bound.decode_seconds == pytest.approx(sum((2e9 + a) / 1e12 for a in attention))



def test_a_moe_step_reads_the_experts_its_batch_routes_to():
    import torch

    from minisgl.models import resolve_model
    from minisgl_bench.roofline import ModelShape

    shape = ModelShape.of(resolve_model("qwen3-30b-a3b", progress=False).path, torch.bfloat16)
    assert 3.0e9 < shape.params < 3.4e9  # "A3B": about 3 B parameters run per token
    one, many = shape.step_weight_bytes(1), shape.step_weight_bytes(4096)
    assert one == pytest.approx(shape.weight_bytes + 8 * shape.expert_bytes)  # 8 of 128 experts
    assert many == pytest.approx(shape.weight_bytes + 128 * shape.expert_bytes)  # every expert, about 61 GB
    assert 60e9 < many < 62e9


def test_a_speculative_run_reports_its_acceptance(tiny_qwen3_path, tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench("--model", tiny_qwen3_path, "--num-requests", "2", "--input-len", "30-30", "--output-len",
                       "24-24", "--dtype", "float32", "--peers", "none", "--speculative-algorithm", "ngram",
                       "--output", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    spec = json.loads(out.read_text())["speculation"]
    assert spec["draft_tokens"] > 0 and 0 <= spec["accepted_tokens"] <= spec["draft_tokens"]
    assert spec["acceptance_rate"] == spec["accepted_tokens"] / spec["draft_tokens"]
    assert "speculative decoding:" in result.stdout and "tokens per verify step" in result.stdout


def test_speculation_over_a_run_is_the_counters_difference():
    from minisgl_bench.serving import speculation

    before = {"spec_draft_tokens_total": 10, "spec_accepted_tokens_total": 4, "spec_verify_steps_total": 5}
    after = {"spec_draft_tokens_total": 30, "spec_accepted_tokens_total": 16, "spec_verify_steps_total": 10}
    assert speculation(before, after) == {"draft_tokens": 20, "accepted_tokens": 12, "verify_steps": 5,
                                          "acceptance_rate": 0.6, "mean_accepted_length": 17 / 5}
    assert speculation(after, after) is None and speculation(None, None) is None
