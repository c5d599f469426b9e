"""`minisgl serve` with a dispatch policy that is not installed stops at once with exit
status 2 and names the installed ones (SCHEDULER_MODE and --scheduler alike)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--scheduler", "least_busy"], {}), ([], {"SCHEDULER_MODE": "least_busy"})],
)
def test_unknown_scheduler_exits_2_listing_installed_policies(tiny_qwen3_path, args, env):
    result = subprocess.run(
        [sys.executable, "-m", "minisgl", "serve", "--model-path", tiny_qwen3_path, "--port", "1", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )
    assert result.returncode == 2, result.stderr
    assert "unknown dispatch policy 'least_busy'" in result.stderr
    for name in ("rr", "fsfs", "random", "cache_aware"):
        assert name in result.stderr.split("installed:")[1]
