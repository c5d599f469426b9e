"""Prefill attention alone, per backend (`--attention-backend` triton and fa), on the presets'
head shapes: one prompt of 2k, 8k and 32k tokens prefilled the way the engine does it, in
chunks of --max-prefill-length (8192) over the cached prefix, then 32 prompts of 512 at once.

Prints, per shape, one layer's attention time and its rate against a large bf16 matmul timed
in the same process (causal FLOPs: 4 x heads x head_dim x visible keys per query), and what
that is for all the layers.

    python plugins/backend-sgl/gpu/bench_prefill_attention.py    # BENCH_PRESETS, BENCH_LENGTHS
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from minisgl_backend_sgl.kernels import flash_attention
from minisgl_backend_sgl.kernels.prefill_choice import prefill_meta
from minisgl_backend_sgl.kernels.select import paged_attention

PRESET_DIR = Path(__file__).resolve().parents[3] / "core/src/minisgl/models/presets"
PRESETS = os.environ.get("BENCH_PRESETS", "qwen3-0.6b,llama-3.1-8b").split(",")
LENGTHS = [int(n) for n in os.environ.get("BENCH_LENGTHS", "2048,8192,32768").split(",")]
# Triton extend kernel shapes to time beside the default: BLOCK_M,BLOCK_N,warps,stages;...
TRITON_CONFIGS = [tuple(map(int, c.split(","))) for c in os.environ.get("BENCH_TRITON_CONFIGS", "").split(";") if c]
CHUNK = 8192


def matmul_rate(device: torch.device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    return 2 * 8192**3 / best(lambda: a @ a, device)


def best(fn, device: torch.device, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    device = torch.device("cuda")
    from minisgl_backend_sgl.kernels import attention

    backends = {"triton": paged_attention(attention)["extend_attention"], "fa": flash_attention.varlen_attention}
    for bm, bn, warps, stages in TRITON_CONFIGS:
        def extend(q, k, v, meta, config=(bm, bn, warps, stages)):
            return attention.extend_attention(q, k, v, meta.page_table, meta.qo_start, meta.extend_lens,
                                              meta.prefix_lens, meta.max_extend_len, block_m=config[0],
                                              block_n=config[1], num_warps=config[2], num_stages=config[3])
        backends[f"triton{bm},{bn},{warps},{stages}"] = extend
    rate = matmul_rate(device)
    print(f"{torch.cuda.get_device_name()}: bf16 matmul {rate / 1e12:.0f} TFLOP/s; torch {torch.__version__}")
    for name in PRESETS:
        config = json.loads((PRESET_DIR / f"{name}.json").read_text())["config"]
        heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
        dim = config.get("head_dim") or config["hidden_size"] // heads
        layers = config["num_hidden_layers"]
        # each step as (requests, new tokens each, cached prefix each)
        shapes = {f"1 x {n}": [(1, min(CHUNK, n - c), c) for c in range(0, n, CHUNK)] for n in LENGTHS}
        shapes["32 x 512"] = [(32, 512, 0)]
        capacity = max(max(LENGTHS), 32 * 512)
        k = torch.randn(capacity, kv_heads, dim, device=device, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        for shape, chunks in shapes.items():
            metas = [prefill_meta(*chunk, device) for chunk in chunks]
            flops = sum(4 * heads * dim * b * (p * e + e * (e + 1) // 2) for b, e, p in chunks)
            qs = [torch.randn(b * e, heads, dim, device=device, dtype=torch.bfloat16) for b, e, _ in chunks]
            cells = []
            for backend, extend in backends.items():
                def run(extend=extend, qs=qs, metas=metas, k=k, v=v) -> None:
                    for q, meta in zip(qs, metas, strict=True):
                        extend(q, k, v, meta)

                seconds = best(run, device)
                cells.append(f"{backend} {seconds * 1e3:7.2f} ms ({flops / seconds / rate:4.0%}; {layers} layers "
                             f"{layers * seconds * 1e3:7.1f} ms)")
            print(f"{name:12s} {shape:9s} " + "\n                       ".join(cells), flush=True)


if __name__ == "__main__":
    main()
