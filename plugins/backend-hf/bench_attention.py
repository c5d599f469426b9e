"""Micro-benchmark of the paged-decode kernel (csrc/paged_decode.c) on a CPU, on
smollm2-135m's attention shape (9 query heads over 3 kv heads of 64): decode rows over a
context, and a prefill chunk as one row per token against torch's SDPA, on 1 and 2 threads.
`--no-avx512` builds the kernel without AVX-512 (its AVX2 path) into a temporary cache.

    python plugins/backend-hf/bench_attention.py --rows 8,32 --context 300 --prefill 64,250,512
"""

from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
import time
from functools import partial

import torch
import torch.nn.functional as F

from minisgl_backend_hf import cpu_kernels

HEADS, KV_HEADS, DIM, SLOTS = 9, 3, 64, 32768


def mean_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="8,32", help="decode rows")
    ap.add_argument("--context", type=int, default=300, help="keys each decode row attends")
    ap.add_argument("--prefill", default="64,250,512", help="prefill chunk lengths")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="the pool's dtype")
    ap.add_argument("--scatter", action="store_true", help="decode contexts on random slots")
    ap.add_argument("--no-avx512", action="store_true", help="build the kernel without AVX-512")
    args = ap.parse_args()
    if args.no_avx512:
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()
        cpu_kernels.CFLAGS.append("-mno-avx512f")
        kernel = cpu_kernels.PagedDecodeKernel(ctypes.CDLL(str(cpu_kernels._build())))
    else:
        kernel = cpu_kernels.paged_decode_kernel()
    assert kernel is not None, "the CPU kernels did not build"
    dtype = getattr(torch, args.dtype)
    k = torch.randn(KV_HEADS, SLOTS, DIM).to(dtype)
    v = torch.randn(KV_HEADS, SLOTS, DIM).to(dtype)
    print(f"pool {args.dtype}, {HEADS} heads over {KV_HEADS} of {DIM}; vector path: {kernel.vector_path(HEADS, KV_HEADS, DIM)}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for rows in map(int, args.rows.split(",")):
            order = torch.randperm(SLOTS) if args.scatter else torch.arange(SLOTS)
            table = order[: rows * args.context].view(rows, args.context).contiguous()
            lens = torch.full((rows,), args.context)
            q, out = torch.randn(rows, HEADS, DIM), torch.empty(rows, HEADS, DIM)
            ms = mean_ms(partial(kernel, q, k, v, table, None, lens, out, 0.125, None, None), 100)
            gbs = rows * args.context * KV_HEADS * DIM * k.element_size() * 2 / ms / 1e6
            print(f"threads {threads}  decode {rows} rows x {args.context} keys: {ms * 1e3:.0f} us a layer, "
                  f"{gbs:.1f} GB/s of K/V")
        for n in map(int, args.prefill.split(",")):
            table, rows_of = torch.arange(n)[None], torch.zeros(n, dtype=torch.long)
            lens, q, out = torch.arange(1, n + 1), torch.randn(n, HEADS, DIM), torch.empty(n, HEADS, DIM)
            ms = mean_ms(partial(kernel, q, k, v, table, rows_of, lens, out, 0.125, None, None), 20)
            qs, ks, vs = q.to(dtype).transpose(0, 1)[None], k[None, :, :n], v[None, :, :n]
            sdpa = mean_ms(partial(F.scaled_dot_product_attention, qs, ks, vs, is_causal=True, scale=0.125,
                                   enable_gqa=True), 20)
            print(f"threads {threads}  prefill {n} tokens: kernel {ms:.3f} ms, torch SDPA {sdpa:.3f} ms")


if __name__ == "__main__":
    main()
