"""`minisgl serve --enable-hierarchical-cache --hicache-storage-backend file`: a server
started again on the same storage directory answers a prompt it saw before with the
prefix read from disk (cached tokens in the OpenAI usage), the same text, and the tier's
hits and bytes in /metrics (JSON and Prometheus), on backend-hf and on backend-sgl over two
tensor-parallel ranks; an engine the supervisor restarts after a SIGKILL comes back warm
the same way."""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest
from server_process import start_server

PROMPT = list(range(100, 140))  # 40 token ids: 9 whole pages of 4 before the last token's page


def _complete(server, model: str):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0.0,
                                    extra_body={"ignore_eos": True})
    details = out.usage.prompt_tokens_details
    return out.choices[0].text, details.cached_tokens if details is not None else 0


@pytest.mark.parametrize("backend", [("--backend", "hf"), ("--backend", "sgl", "--device", "cpu", "--tp-size", "2")],
                         ids=["hf", "sgl-tp2"])
def test_a_restarted_server_serves_the_prefix_from_disk(tiny_qwen3_path, tmp_path, backend):
    args = (*backend, "--dtype", "float32", "--page-size", "4", "--enable-hierarchical-cache",
            "--hicache-storage-backend", "file", "--hicache-storage-dir", str(tmp_path / "kv"))
    first = start_server(tiny_qwen3_path, *args, log_dir=tmp_path)
    try:
        cold, cached = _complete(first, tiny_qwen3_path)
    finally:
        first.stop()
    assert not cached and list((tmp_path / "kv").glob("*.kvpage"))

    second = start_server(tiny_qwen3_path, *args, log_dir=tmp_path)
    try:
        warm, cached = _complete(second, tiny_qwen3_path)
        metrics = httpx.get(second.url + "/metrics").json()
        text = httpx.get(second.url + "/metrics", params={"format": "prometheus"}).text
    finally:
        second.stop()
    assert warm == cold and cached == 36
    assert metrics["hicache_disk_hit_tokens_total"] == 36 and metrics["hicache_loaded_bytes_total"] > 0
    assert metrics["replicas"][0]["hicache_disk_hit_tokens_total"] == 36
    assert "minisgl:hicache_disk_hit_tokens_total" in text and "minisgl:hicache_loaded_bytes_total" in text


def test_an_engine_restarted_after_sigkill_serves_the_prefix_from_disk(tiny_qwen3_path, tmp_path):
    args = ("--backend", "hf", "--dtype", "float32", "--page-size", "4", "--enable-hierarchical-cache",
            "--hicache-storage-backend", "file", "--hicache-storage-dir", str(tmp_path / "kv"))
    server = start_server(tiny_qwen3_path, *args, log_dir=tmp_path, env={"ENGINE_RESTART_BACKOFF_S": "0.1"})
    try:
        cold, cached = _complete(server, tiny_qwen3_path)
        assert not cached
        # the disk tier writes on a thread of its own: a kill loses what is still queued
        deadline = time.monotonic() + 30
        while len([f for f in (tmp_path / "kv").iterdir() if not f.name.startswith(".tmp-")]) < 9:
            assert time.monotonic() < deadline, "the 9 pages never reached the disk"
            time.sleep(0.05)
        (engine,) = httpx.get(server.url + "/health").json()["engines"]
        os.kill(engine["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            health = httpx.get(server.url + "/health").json()
            (now,) = health["engines"]
            if health["status"] == "ok" and now["restarts"] == 1 and now["state"] == "ready":
                break
            assert time.monotonic() < deadline, f"the engine did not come back: {health}\n{server.log()}"
            time.sleep(0.2)
        assert now["pid"] != engine["pid"]
        warm, cached = _complete(server, tiny_qwen3_path)
        metrics = httpx.get(server.url + "/metrics").json()
    finally:
        server.stop()
    # its host tier died with the process, the disk tier did not
    assert warm == cold and cached == 36
    assert metrics["replicas"][0]["hicache_disk_hit_tokens_total"] == 36
