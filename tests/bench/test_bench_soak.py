"""`minisgl bench soak` against a real server (briefly: the command, not a soak): mixed
traffic with control commands and a replica killed meanwhile; the report counts outcomes
and finds the KV pool and inflight slots back where they started. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from server_process import start_server_with_control


def test_a_short_soak_reports_outcomes_and_a_pool_back_where_it_started(tiny_qwen3_path, tmp_path):
    srv = start_server_with_control(tiny_qwen3_path, log_dir=tmp_path,
                                    env={"ENGINE_RESTART_LIMIT": "5", "ENGINE_RESTART_BACKOFF_S": "0.2"})
    try:
        out = tmp_path / "soak.json"
        result = subprocess.run(
            [sys.executable, "-m", "minisgl", "bench", "soak", "--base-url", srv.url, "--minutes", "0.3",
             "--concurrency", "3", "--max-tokens", "16", "--kill-every", "8", "--control-endpoint", srv.endpoint,
             "--server-pid", str(srv.proc.pid), "--window", "5", "--json", str(out)],
            capture_output=True, text=True, timeout=600, env={**os.environ, "BENCH_LOG_LEVEL": "WARNING"})
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(out.read_text())
        kinds = {key.split(":")[0] for key in report["outcomes"]}
        assert {"stream", "complete", "disconnect"} <= kinds, report["outcomes"]
        assert report["outcomes"].get("stream:ok", 0) + report["outcomes"].get("complete:ok", 0) > 0
        assert report["engines_killed"] >= 1 and report["end"]["engine_restarts"] >= 1, report
        assert report["kv_matches"] and report["idle_at_end"], report
        assert report["start"]["server_rss_bytes"] and report["end"]["server_rss_bytes"]
        assert report["latency_windows"] and report["environment"]
        assert srv.proc.poll() is None
    finally:
        srv.stop()
