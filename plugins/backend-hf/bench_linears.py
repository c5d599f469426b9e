"""Micro-benchmark of a decode step's projections on a CPU: oneDNN's packed GEMM against the
few-row kernels (csrc/gemv.c, csrc/rows_bf16.c) on smollm2-135m's shapes (30 layers and the
LM head), for several row counts and 1 and 2 threads. Up to 8 distinct weights per shape,
so part of them stays in cache: compare kernels, not against the memory floor.

    python plugins/backend-hf/bench_linears.py --rows 1,4,8,16,32 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch

from minisgl_backend_hf import cpu_kernels

SHAPES = [(576, 576, 2), (192, 576, 2), (576, 576, 0), (1536, 576, 2), (576, 1536, 1), (49152, 576, -1)]
LAYERS = 30


def best_of(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,4,8,16,32")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    ops = cpu_kernels.decoder_ops(dtype)
    torch.manual_seed(0)
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for rows in map(int, args.rows.split(",")):
            total = {"oneDNN": 0.0, "few-row kernel": 0.0}
            # (out, in, per layer: q/k/v-like count; 0 = o_proj; -1 = once, the LM head)
            for n, k, per_layer in SHAPES:
                count = 1 if per_layer < 0 else LAYERS * max(per_layer, 1)
                weights = [torch.randn(n, k).to(dtype) / k**0.5 for _ in range(min(count, 8))]
                x = torch.randn(rows, k).to(dtype)
                onednn = [torch.ops.mkldnn._reorder_linear_weight(w, 32) for w in weights]
                total["oneDNN"] += best_of(lambda x=x, onednn=onednn: [torch.ops.mkldnn._linear_pointwise(
                    x, p, None, "none", [], "") for p in onednn]) / len(weights) * count
                if ops is not None and ops.gemv_rows and (dtype == torch.bfloat16 or rows <= cpu_kernels.GEMV_ROWS):
                    packed = [cpu_kernels.pack_gemv_weight(w) for w in weights]
                    total["few-row kernel"] += best_of(lambda x=x, n=n, packed=packed: [
                        ops.gemv(x, p, n, None) for p in packed]) / len(weights) * count
            print(f"threads {threads} rows {rows:3d}: " + "  ".join(f"{name} {t * 1e3:7.2f} ms" for name, t in total.items() if t),
                  flush=True)


if __name__ == "__main__":
    main()
