"""Decode attention's split kernel swept over its shape on the GPU: key-range splits, keys
per block, warps and pipeline stages, for the decode batches W1 runs (qwen3-0.6b: 16 query
and 8 KV heads; llama-3.1-8b: 32 and 8; head dim 128, bf16, one slot per page, slots
scattered over the pool). Prints, per shape, the kernel's time and its KV read rate against
the device's copy rate for the shipped choice (forward_meta.decode_splits, 64 keys, 4 warps, 2
stages) and for the best configuration found.

    PYTHONPATH=core/src:plugins/backend-sgl/src python plugins/backend-sgl/gpu/tune_decode.py
"""

from __future__ import annotations

import itertools
import os
import random

import torch
from triton.testing import do_bench_cudagraph

from minisgl_backend_sgl.forward_meta import decode_splits
from minisgl_backend_sgl.kernels.attention import decode_attention
from minisgl_bench.roofline import measure_ceilings

HEAD_DIM = 128
SHAPES = {"qwen3-0.6b": (16, 8), "llama-3.1-8b": (32, 8)}
SHAPES = {k: SHAPES[k] for k in os.environ.get("TUNE_SHAPES", ",".join(SHAPES)).split(",")}
# (batch, context lengths): W1's decode batches run up to 256 requests of 100-2048 tokens
BATCHES = [(1, [1024]), (16, [1024]), (64, [1024]), (256, None)]
BATCHES = [b for b in BATCHES if str(b[0]) in os.environ.get("TUNE_BATCHES", "1,16,64,256").split(",")]
CONFIGS = list(itertools.product((1, 2, 4, 8, 16), (32, 64, 128), ((4, 2), (8, 2), (4, 3))))


def sweep(heads: int, kv_heads: int, lens: list[int], device: torch.device, today: tuple) -> tuple[dict, int]:
    """{(splits, block_n, warps, stages): ms} and the KV bytes a call reads."""
    batch, slots = len(lens), sum(lens) + 1
    k = torch.randn(slots, kv_heads, HEAD_DIM, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    perm = torch.randperm(slots - 1, device=device) + 1
    table = torch.zeros(batch, max(lens), dtype=torch.int32, device=device)
    used = 0
    for b, n in enumerate(lens):
        table[b, :n] = perm[used:used + n].to(torch.int32)
        used += n
    seq = torch.tensor(lens, dtype=torch.int32, device=device)
    q = torch.randn(batch, heads, HEAD_DIM, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    times = {}
    for splits, block_n, warps, stages in {today, *((s, b, w, st) for s, b, (w, st) in CONFIGS)}:
        def call(splits=splits, block_n=block_n, warps=warps, stages=stages):
            decode_attention(q, k, v, table, seq, splits, out, block_n, warps, stages)
        try:
            call()  # compile outside the graph
            # replayed in a CUDA graph, as decode runs: a plain loop would time Python's launches
            times[(splits, block_n, warps, stages)] = do_bench_cudagraph(call, rep=20)
        except Exception as exc:  # a configuration that does not compile (shared memory)
            print(f"  skip splits={splits} block_n={block_n} warps={warps} stages={stages}: {type(exc).__name__}")
    return times, 2 * sum(lens) * kv_heads * HEAD_DIM * 2


def main() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    rate = measure_ceilings("cuda", torch.bfloat16).bandwidth
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    print(f"copy rate {rate / 1e9:.0f} GB/s, {num_sms} SMs")
    rng = random.Random(0)
    for name, (heads, kv_heads) in SHAPES.items():
        for batch, lens in BATCHES:
            lens = lens * batch if lens else [rng.randint(100, 2048) for _ in range(batch)]
            today = (decode_splits(batch, kv_heads, num_sms), 64, 4, 2)
            times, kv_bytes = sweep(heads, kv_heads, lens, device, today)
            best = min(times, key=times.get)
            print(f"{name} B={batch} mean context {sum(lens) / batch:.0f}:")
            for label, cfg in (("today", today), ("best ", best)):
                ms = times[cfg]
                print(f"  {label} splits={cfg[0]} block_n={cfg[1]} warps={cfg[2]} stages={cfg[3]}: "
                      f"{ms * 1e3:.1f} us, KV at {kv_bytes / (ms * 1e-3) / rate:.0%} of the copy rate")
            print("  next: " + ", ".join(f"{cfg} {times[cfg] * 1e3:.1f} us" for cfg in sorted(times, key=times.get)[1:5]))


if __name__ == "__main__":
    main()
