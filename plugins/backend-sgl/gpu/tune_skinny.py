"""The skinny GEMM against cuBLAS at decode batch sizes, per projection shape, on a GPU.

For the projections of qwen3-0.6b and llama-3.1-8b (qkv, o, gate_up, down), rows M in
1..16, bf16: every Triton configuration in the sweep and F.linear, each captured in a CUDA
graph once per copy of the weight, the copies together past the L2 cache (as a decode step
reads each layer's weights once), timed by replaying (skinny_gemm.seconds_per_call).
Prints the best configuration per shape and M, its time against cuBLAS's, and the share of
the copy rate its weight read reaches; writes them as JSON to $OUT/tune_skinny.json.

    PYTHONPATH=core/src:plugins/backend-sgl/src python plugins/backend-sgl/gpu/tune_skinny.py
Env: TUNE_ROWS (default 1,2,4,8,16), TUNE_MODELS (default qwen3-0.6b,llama-3.1-8b).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from minisgl_backend_sgl.kernels.skinny_gemm import SkinnyConfig, seconds_per_call, skinny_gemm
from minisgl_bench.roofline import measure_ceilings

SHAPES = {  # name: (N, K) of W [N, K]
    "qwen3-0.6b": {"qkv": (4096, 1024), "o": (1024, 2048), "gate_up": (6144, 1024), "down": (1024, 3072)},
    "llama-3.1-8b": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)},
}
ROWS = [int(r) for r in os.environ.get("TUNE_ROWS", "1,2,4,8,16").split(",")]
MODELS = os.environ.get("TUNE_MODELS", "qwen3-0.6b,llama-3.1-8b").split(",")
CONFIGS = [SkinnyConfig(block_n=bn, block_k=bk, split_k=s, num_stages=st)
           for bn, bk, s, st in itertools.product((16, 32, 64), (128, 256), (1, 2, 4, 8, 16), (3, 4))]
L2_BYTES = 128 * 1024**2


def main() -> int:
    torch.manual_seed(0)
    bw = measure_ceilings("cuda", torch.bfloat16).bandwidth
    print(f"{torch.cuda.get_device_name()}: copy {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    dtype = torch.bfloat16
    results = []
    for model in MODELS:
        for name, (n, k) in SHAPES[model].items():
            w_bytes = n * k * 2
            weights = [torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5 for _ in range(max(2, -(-L2_BYTES // w_bytes)))]
            for m in ROWS:
                x = torch.randn(m, k, device="cuda", dtype=dtype)

                def cublas(w, x=x):
                    return F.linear(x, w)

                ref = cublas(weights[0]).float()
                t_cublas = seconds_per_call(cublas, weights)
                best = None
                for cfg in CONFIGS:
                    if k // cfg.split_k < cfg.block_k:
                        continue
                    try:
                        out = skinny_gemm(x, weights[0], None, cfg).float()
                        err = ((out - ref).norm() / ref.norm()).item()
                        if err > 2e-2:
                            print(f"  {model} {name} M={m} {cfg}: relative error {err:.2e}", flush=True)
                            continue
                        t = seconds_per_call(lambda w, cfg=cfg, x=x: skinny_gemm(x, w, None, cfg), weights)
                    except Exception as exc:  # a configuration that does not compile or fit
                        print(f"  {model} {name} M={m} {cfg}: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
                        continue
                    if best is None or t < best[0]:
                        best = (t, cfg)
                row = dict(model=model, proj=name, n=n, k=k, m=m, cublas_us=t_cublas * 1e6,
                           cublas_pct=100 * w_bytes / bw / t_cublas)
                if best is not None:
                    row.update(best_us=best[0] * 1e6, best_pct=100 * w_bytes / bw / best[0],
                               speedup=t_cublas / best[0], config=best[1].__dict__)
                results.append(row)
                print(json.dumps(row), flush=True)
            del weights
            torch.cuda.empty_cache()
    print(f"\n{'model':<13} {'proj':<8} {'M':>3} {'cuBLAS us':>10} {'%copy':>6} {'skinny us':>10} {'%copy':>6} {'x':>5}  config")
    for r in results:
        c = r.get("config", {})
        print(f"{r['model']:<13} {r['proj']:<8} {r['m']:>3} {r['cublas_us']:>10.2f} {r['cublas_pct']:>6.0f} "
              f"{r.get('best_us', float('nan')):>10.2f} {r.get('best_pct', float('nan')):>6.0f} {r.get('speedup', 0):>5.2f}  "
              f"bn{c.get('block_n')} bk{c.get('block_k')} s{c.get('split_k')}")
    out = os.environ.get("OUT")
    if out:
        Path(out, "tune_skinny.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
