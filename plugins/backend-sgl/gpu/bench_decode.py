"""Decode throughput of backend-sgl on random weights, against the HBM limit and transformers.

For qwen3-0.6b- and llama-3.1-8b-shaped models (the core's presets, random bf16 weights):
decode steps of B requests with ~1k-token contexts, B in 1, 16, 64, 256, with and without
CUDA graphs. A step is `runner.forward` (model, greedy sampling, copy of the tokens to the
host) waited on; ms/step is the median over the timed steps. The floor is the bytes a step
must read (all weights + the batch's KV) over the measured copy bandwidth. The peer is
transformers' own forward with a StaticCache at the same shapes (eager, bf16, sdpa).

    PYTHONPATH=core/src:plugins/backend-sgl/src:plugins/backend-sgl/tests python plugins/backend-sgl/gpu/bench_decode.py

BENCH_VARIANTS=plain,pdl runs the kernels without and with programmatic dependent launch
(default: what the runner picks, pdl); a variant named with "nogemv" leaves the skinny GEMM's
GEMV form out of the kernels measured for the projections. BENCH_EAGER=0 skips the runs without graphs; BENCH_PROFILE=1,64 also prints the kernels one graph replay runs at those batch sizes, with their times.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from batches import greedy_sampling

from minisgl.engine.batch import ForwardBatch
from minisgl.settings import Settings
from minisgl_backend_sgl.runner import SglModelRunner
from minisgl_bench.roofline import measure_ceilings

CONTEXT = 1024
BATCHES = [int(b) for b in os.environ.get("BENCH_BATCHES", "1,16,64,256").split(",")]
PRESETS = os.environ.get("BENCH_PRESETS", "qwen3-0.6b,llama-3.1-8b").split(",")
STEPS = int(os.environ.get("BENCH_STEPS", "30"))
PRESET_DIR = Path(__file__).resolve().parents[3] / "core/src/minisgl/models/presets"
PROFILE_BATCHES = [int(b) for b in os.environ.get("BENCH_PROFILE", "").split(",") if b]
ROWS: list[dict] = []


def write_config(name: str) -> str:
    data = json.loads((PRESET_DIR / f"{name}.json").read_text())
    out = Path(f"/tmp/bench_{name}")
    out.mkdir(exist_ok=True)
    (out / "config.json").write_text(json.dumps(data["config"]))
    return str(out)


def decode_batch(b: int, device: str = "cuda") -> ForwardBatch:
    """B requests at position CONTEXT-1 .. each holding CONTEXT tokens in its own slot range."""
    stride = CONTEXT + 8
    table = (torch.arange(b, device=device)[:, None] * stride + torch.arange(CONTEXT, device=device)[None, :])
    ids = torch.randint(0, 1000, (b,), device=device)
    return ForwardBatch(
        input_ids=ids, positions=torch.full((b,), CONTEXT - 1, device=device), out_slots=table[:, -1].contiguous(),
        page_table=table, extend_lens=[1] * b, prefix_lens=[CONTEXT - 1] * b,
        sample_indices=torch.arange(b, device=device), sampling=greedy_sampling(b, device), seq_lens=[CONTEXT] * b,
    )


def time_steps(step, steps: int = STEPS) -> float:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile_replays(name: str, b: int, graph: torch.cuda.CUDAGraph, replays: int = 20) -> None:
    """Each kernel's device time and count per replay of one decode graph (what a step is made of)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.key_averages() if e.self_device_time_total > 0), key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in kernels) / replays
    print(f"{name} B={b}: kernels per replay {sum(e.count for e in kernels) / replays:.0f}, "
          f"kernel time {total:.1f} us per replay", flush=True)
    for e in kernels[:14]:
        print(f"  {e.self_device_time_total / replays:8.1f} us  {e.count / replays:5.0f}x  "
              f"{e.self_device_time_total / e.count:6.2f} us each  {e.key[:90]}", flush=True)


@contextlib.contextmanager
def variant(name: str):
    """The runner's kernels with PDL switched off unless `name` says pdl, and without the GEMV
    form where it says nogemv."""
    from minisgl_backend_sgl.kernels import pdl, skinny_gemm

    saved, saved_candidates = pdl.launch_options, skinny_gemm.candidates
    if "pdl" not in name:
        pdl.launch_options = lambda device: {"PDL": False}
    if "nogemv" in name:
        skinny_gemm.candidates = lambda *args: [c for c in saved_candidates(*args) if not c.gemv]
    skinny_gemm._chosen.clear()
    try:
        yield
    finally:
        pdl.launch_options, skinny_gemm.candidates = saved, saved_candidates
        skinny_gemm._chosen.clear()


def bench_ours(name: str, path: str, bw: float) -> None:
    for kernels in os.environ.get("BENCH_VARIANTS", "pdl").split(","):
        with variant(kernels):
            bench_runner(name, path, bw, kernels)


def bench_runner(name: str, path: str, bw: float, kernels: str) -> None:
    for graphs in (True, False) if os.environ.get("BENCH_EAGER", "1") == "1" else (True,):
        settings = Settings(num_pages=max(BATCHES) * (CONTEXT + 8) + 64, max_running_requests=max(BATCHES), dummy_weight=True)
        runner = SglModelRunner(settings, path, dummy=True, graph_batch_sizes_override=BATCHES if graphs else [])
        runner.kv.k.uniform_(-1, 1)
        runner.kv.v.uniform_(-1, 1)
        weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
        kv_token = runner.kv.shape.bytes_per_token
        for b in BATCHES:
            batch = decode_batch(b)
            sec = time_steps(lambda runner=runner, batch=batch: runner.forward(batch).resolve())
            floor = (weight_bytes + b * CONTEXT * kv_token) / bw
            row = dict(model=name, impl=("sgl+graphs " if graphs else "sgl eager ") + kernels, batch=b, ms=sec * 1e3,
                       tok_s=b / sec, floor_ms=floor * 1e3, pct_of_floor=100 * floor / sec)
            if graphs:  # the device time of the model alone: graph replays timed with events
                graph = runner.graphs.graphs[runner.graphs.padded_size(b)]
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(50):
                    graph.replay()
                end.record()
                torch.cuda.synchronize()
                row["replay_ms"] = start.elapsed_time(end) / 50
                if b in PROFILE_BATCHES:
                    profile_replays(f"{name} {kernels}", b, graph)
            ROWS.append(row)
            print(json.dumps(row), flush=True)
        runner.shutdown()
        runner = None
        gc.collect()
        torch.cuda.empty_cache()


def bench_transformers(name: str, path: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, StaticCache

    config = AutoConfig.from_pretrained(path)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    for b in BATCHES:
        cache = None
        try:
            cache = StaticCache(config=config, max_cache_len=CONTEXT + 8)
            ids = torch.randint(0, 1000, (b, 1), device="cuda")
            # fill the cache's first CONTEXT-1 positions with one prefill-sized write (values don't matter)
            with torch.no_grad():
                model(torch.randint(0, 1000, (b, CONTEXT - 1), device="cuda")[:, :8], past_key_values=cache,
                      cache_position=torch.arange(8, device="cuda"))
            pos = torch.tensor([CONTEXT - 1], device="cuda")

            def step(ids=ids, cache=cache, pos=pos, b=b):
                with torch.no_grad():
                    logits = model(ids, past_key_values=cache, cache_position=pos, position_ids=pos[None].expand(b, 1)).logits
                    logits[:, -1].argmax(-1).cpu()

            sec = time_steps(step, steps=max(STEPS // 3, 5))
            row = dict(model=name, impl="transformers static cache", batch=b, ms=sec * 1e3, tok_s=b / sec)
        except Exception as exc:  # report, keep going (e.g. out of memory at large B)
            row = dict(model=name, impl="transformers static cache", batch=b, error=f"{type(exc).__name__}: {str(exc)[:120]}")
        ROWS.append(row)
        print(json.dumps(row), flush=True)
        cache = None
        torch.cuda.empty_cache()
    model = None
    gc.collect()
    torch.cuda.empty_cache()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    bw = measure_ceilings("cuda", torch.bfloat16).bandwidth
    print(f"device-to-device copy: {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    for name in PRESETS:
        path = write_config(name)
        bench_ours(name, path, bw)
        if os.environ.get("BENCH_PEER", "1") == "1":
            bench_transformers(name, path)
    print("\nmodel          impl                       B    ms/step    tok/s   floor ms  %floor")
    for r in ROWS:
        if "error" in r:
            print(f"{r['model']:<14} {r['impl']:<30} {r['batch']:>4}  {r['error']}")
            continue
        print(f"{r['model']:<14} {r['impl']:<30} {r['batch']:>4} {r['ms']:>9.3f} {r['tok_s']:>9.0f}"
              + (f" {r['floor_ms']:>9.3f} {r['pct_of_floor']:>6.1f}" if "floor_ms" in r else "")
              + (f"  (graph replay alone {r['replay_ms']:.3f} ms)" if "replay_ms" in r else ""))
    out = os.environ.get("OUT")
    if out:
        Path(out, "bench_decode.json").write_text(json.dumps(ROWS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
