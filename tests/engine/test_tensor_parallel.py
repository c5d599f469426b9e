"""Tensor parallelism on the CPU (backend-sgl, gloo, two processes): TP=2 gives TP=1's logits
within fp32 tolerance and its greedy tokens, through the runner, `minisgl generate` and the
server; a port in use and a rank that dies are clear errors, never a hang (the server answers
503 and restarts the engine with new ranks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import openai
import pytest
import torch
from server_process import start_server

from minisgl.models import ResolvedModel
from minisgl.runner_testing import Request, SlotAllocator, make_batch
from minisgl.settings import settings_from_kwargs
from minisgl.testing import make_tiny_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_runner(path: str, tp_size: int, **kw):
    from minisgl_backend_sgl.runner import create_runner

    settings = settings_from_kwargs(dtype="float32", device="cpu", num_pages=256, tp_size=tp_size,
                                    port=free_port() - 1, **kw)
    return create_runner(settings, ResolvedModel(name="tiny", path=path, dummy=False, kind="local"))


def batch_of(prompts: list[list[int]], capacity: int):
    return make_batch(SlotAllocator(capacity, seed=2), [(Request(), p) for p in prompts], every_row=True)


@pytest.mark.parametrize(("arch", "heads", "kv_heads"), [("qwen3", 4, 2), ("qwen3", 4, 1), ("qwen3", 6, 3), ("qwen3_moe", 4, 2)],
                         ids=["even", "kv-replicated", "uneven", "moe"])
def test_tp2_logits_equal_tp1(tmp_path, arch, heads, kv_heads):
    path = make_tiny_model(tmp_path, arch=arch, num_heads=heads, num_kv_heads=kv_heads, hidden_size=96, seed=4,
                           num_layers=2)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    logits = {}
    for tp in (1, 2):
        runner = make_runner(path, tp)
        try:
            logits[tp] = runner.logits(batch_of(prompts, runner.kv_capacity()))
        finally:
            runner.shutdown()
    torch.testing.assert_close(logits[2], logits[1], atol=1e-5, rtol=1e-5)


def generate(model: str, tp: int, port: int) -> str:
    out = subprocess.run([sys.executable, "-m", "minisgl", "generate", "--backend", "sgl", "--device", "cpu",
                          "--tp-size", str(tp), "--port", str(port), "--num-pages", "2048", "--model-path", model,
                          "--max-new-tokens", "12", "The capital of France is"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "MINISGL_LOG_LEVEL": "WARNING"})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_generate_on_two_ranks_prints_the_one_rank_text(smollm2_path):
    # smollm2's 9 query and 3 KV heads split 6 + 3 over two ranks
    one, two = generate(smollm2_path, 1, free_port()), generate(smollm2_path, 2, free_port() - 1)
    assert one == two and "Paris" in one


def test_a_port_in_use_is_a_clear_error(tiny_qwen3_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        from minisgl_backend_sgl.runner import create_runner

        settings = settings_from_kwargs(dtype="float32", device="cpu", num_pages=64, tp_size=2, port=port - 1)
        with pytest.raises(RuntimeError, match=rf"port {port} \(--port \+ 1\), which is in use"):
            create_runner(settings, ResolvedModel(name="tiny", path=tiny_qwen3_path, dummy=False, kind="local"))


def test_a_rank_that_dies_fails_the_step_instead_of_hanging(tiny_qwen3_path):
    runner = make_runner(tiny_qwen3_path, 2)
    try:
        batch = batch_of([[5, 6, 7]], runner.kv_capacity())
        runner.logits(batch)
        os.kill(runner.workers.procs[0].pid, signal.SIGKILL)
        runner.workers.procs[0].join(timeout=10)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="tensor-parallel worker minisgl-tp1 died"):
            runner.logits(batch_of([[8, 9]], runner.kv_capacity()))
        assert time.monotonic() - started < 30
    finally:
        runner.shutdown()


def test_backends_without_tensor_parallelism_refuse_tp_size(tiny_qwen3_path):
    from minisgl import LLM

    with pytest.raises(ValueError, match=r"--tp-size 2: backend hf runs on one device; tensor parallelism needs "
                                         r"--backend sgl"):
        LLM(tiny_qwen3_path, backend="hf", tp_size=2)


def test_the_server_on_two_ranks_answers_as_on_one(tiny_qwen3_path, tmp_path):
    answers = {}
    for tp in (1, 2):
        (tmp_path / f"tp{tp}").mkdir()
        srv = start_server(tiny_qwen3_path, "--backend", "sgl", "--device", "cpu", "--tp-size", str(tp),
                           "--num-pages", "1024", log_dir=tmp_path / f"tp{tp}")
        try:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            r = client.completions.create(model=client.models.list().data[0].id, prompt="Hello there", max_tokens=12,
                                          temperature=0, extra_body={"ignore_eos": True})
            answers[tp] = r.choices[0].text
        finally:
            srv.stop()
    assert answers[1] == answers[2] and answers[1]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _spawned(pid: int) -> list[int]:
    """Child processes started by multiprocessing's spawn (not its resource tracker)."""
    def cmdline(p: int) -> str:
        with open(f"/proc/{p}/cmdline") as f:
            return f.read()
    return [c for c in _children(pid) if "spawn_main" in cmdline(c) and "resource_tracker" not in cmdline(c)]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads process children from /proc")
def test_a_dead_rank_fails_requests_cleanly_and_the_engine_comes_back(tiny_qwen3_path, tmp_path):
    srv = start_server(tiny_qwen3_path, "--backend", "sgl", "--device", "cpu", "--tp-size", "2",
                       "--engine-restart-backoff-s", "0.5", log_dir=tmp_path)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        ask = dict(model=model, prompt="Hello there", max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
        first = client.completions.create(**ask).choices[0].text
        [engine] = _spawned(srv.proc.pid)
        [rank1] = _spawned(engine)
        os.kill(rank1, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as failed:  # the step that finds the rank gone fails: no hang
            client.completions.create(**ask)
        assert failed.value.status_code == 503 and failed.value.body["code"] == "engine_unavailable"
        assert time.monotonic() - started < 60
        deadline = time.monotonic() + 120
        while True:  # the server restarts the engine, with new ranks
            try:
                again = client.completions.create(**ask).choices[0].text
                break
            except openai.APIStatusError as exc:
                assert exc.status_code == 503 and time.monotonic() < deadline, exc
                time.sleep(1)
        assert again == first
    finally:
        srv.stop()
