"""The seed's smoke test, `minisgl generate "Hello from mini-sglang" --max-new-tokens 32`,
and `minisgl chat`, with the engine started in-process (no server)."""

from __future__ import annotations

import subprocess
import sys


def test_generate_streams_to_stdout(tiny_qwen3_path):
    out = subprocess.run(
        [sys.executable, "-m", "minisgl", "generate", "Hello from mini-sglang", "--max-new-tokens", "32",
         "--model-path", tiny_qwen3_path, "--num-pages", "4096"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()
    assert "prefill" in out.stderr  # the learning-friendly logs go to stderr


def test_chat_multi_turn_keeps_prior_turns(tiny_qwen3_path):
    out = subprocess.run(
        [sys.executable, "-m", "minisgl", "chat", "-v", "--multi-turn", "--max-new-tokens", "4", "--temperature", "0",
         "--model-path", tiny_qwen3_path, "--num-pages", "4096"],
        input="first question\nsecond question\n", capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout  # one streamed answer per line of input (the tiny model's text is noise)
    prefills = [line for line in out.stderr.splitlines() if "prefill rid=" in line]
    assert len(prefills) == 2
    # the second turn's prompt holds the first turn, so the prefix cache serves part of it
    assert "cached=0" not in prefills[1]
