"""What programmatic dependent launch saves per kernel in a CUDA graph on this GPU.

A chain of N small dependent Triton kernels (each reads what the previous wrote), captured
in a graph with and without PDL; prints the time per kernel of each.

    python plugins/backend-sgl/gpu/probe_pdl.py
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _step(x_ptr, y_ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m) * 1.0001 + 1.0, mask=m)


def chain(a, b, pdl, length=200, blocks=64):
    n = a.numel()
    for i in range(length):
        src, dst = (a, b) if i % 2 == 0 else (b, a)
        _step[(blocks,)](src, dst, n, BLOCK=n // blocks, PDL=pdl, launch_pdl=pdl)


def main():
    for blocks in (16, 132):
        a = torch.ones(blocks * 1024, device="cuda")
        b = torch.zeros_like(a)
        for pdl in (False, True):
            chain(a, b, pdl, blocks=blocks)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                chain(a, b, pdl, blocks=blocks)
            for _ in range(3):
                g.replay()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(20):
                g.replay()
            e.record()
            e.synchronize()
            print(f"blocks {blocks} pdl {pdl}: {s.elapsed_time(e) / 20 / 200 * 1e3:.2f} us per kernel", flush=True)
    # correctness: the chain's result with PDL equals without
    ref, tmp = torch.ones(4096, device="cuda"), torch.zeros(4096, device="cuda")
    chain(ref, tmp, False, blocks=4)
    got, tmp2 = torch.ones(4096, device="cuda"), torch.zeros(4096, device="cuda")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        chain(got, tmp2, True, blocks=4)
    got.fill_(1)
    tmp2.zero_()
    g.replay()
    torch.cuda.synchronize()
    print("pdl chain equal:", torch.equal(ref, got))


if __name__ == "__main__":
    main()
