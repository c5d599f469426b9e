"""`minisgl bench grammar` end to end on a tiny model: both runs decode, the cost is printed,
and the header says which dtype and backend `auto` became. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys


def test_bench_grammar_prints_both_runs_and_what_auto_became(tiny_qwen3_path):
    result = subprocess.run([sys.executable, "-m", "minisgl", "bench", "grammar", "--model", tiny_qwen3_path,
                             "--batch", "4", "--tokens", "8", "--rounds", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())  # rich wraps lines at 80 columns
    assert "free" in out and "json_schema" in out and "grammar cost:" in out
    assert "dtype: auto (float32)" in out or "dtype: auto (bfloat16)" in out
    assert "backend: auto (" in out
