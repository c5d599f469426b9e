"""`minisgl bench hicache` end to end on a tiny model: every mode runs the multi-turn
workload, the tiers serve what the device pool let go, the restart on a warm disk tier
finds its chat's history and the cold one does not, and every mode gives the same tokens.
No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_hicache_reports_every_mode_and_the_restart(tiny_qwen3_path, tmp_path):
    report = tmp_path / "hicache.json"
    result = subprocess.run([sys.executable, "-m", "minisgl", "bench", "hicache", "--model", tiny_qwen3_path,
                             "--backend", "hf", "--dtype", "float32", "--conversations", "6", "--turns", "2",
                             "--system-len", "64", "--user-len", "8", "--output-len", "4", "--concurrency", "1",
                             "--page-size", "4", "--json", str(report)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(report.read_text())
    rows = {r["mode"]: r for r in data["results"]}
    assert list(rows) == ["off", "host", "disk", "restart warm", "restart cold"]
    assert data["same_tokens"] is True
    # the pool holds two chats of six: without the tiers a history is prefilled again each turn
    assert rows["host"]["prefill_tokens"] < rows["off"]["prefill_tokens"] and rows["host"]["host_hit_tokens"] > 0
    assert rows["disk"]["prefill_tokens"] < rows["off"]["prefill_tokens"]
    assert rows["restart warm"]["disk_hit_tokens"] > 0 and rows["restart cold"]["cached_tokens"] == 0
    assert rows["restart warm"]["prefill_tokens"] < rows["restart cold"]["prefill_tokens"]
    assert all(r["ttft_ms"]["p50"] > 0 and r["output_tok_s"] > 0 for r in rows.values())


def test_bench_hicache_refuses_an_unknown_mode_and_a_pool_too_small(tiny_qwen3_path):
    for flag, value, named in (("--modes", "off,gpu", "--modes"), ("--kv-tokens", "8", "--kv-tokens")):
        result = subprocess.run([sys.executable, "-m", "minisgl", "bench", "hicache", "--model", tiny_qwen3_path,
                                 flag, value], capture_output=True, text=True, timeout=600)
        assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr
