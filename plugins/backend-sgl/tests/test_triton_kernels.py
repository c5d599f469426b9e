"""Triton kernels against the torch references, on fresh random inputs and scattered slots.

Runs on a CUDA GPU, or on the CPU in Triton's interpreter (TRITON_INTERPRET=1, float32);
skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from minisgl_backend_sgl.kernels import reference


@pytest.fixture(scope="module")
def device() -> torch.device:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("needs Triton (pip install triton)")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return torch.device("cpu")
    pytest.skip("needs a CUDA GPU, or TRITON_INTERPRET=1 to run the kernels in Triton's interpreter")


def dtypes(device: torch.device) -> list[torch.dtype]:
    return [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]


def tol(dtype: torch.dtype) -> dict:
    return dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)


def test_rmsnorm_and_fused_residual(device):
    from minisgl_backend_sgl.kernels import norm

    for dtype in dtypes(device):
        x = torch.randn(5, 300, device=device, dtype=dtype)
        w = (torch.rand(300, device=device) + 0.5).to(dtype)
        torch.testing.assert_close(norm.rmsnorm(x, w, 1e-6), reference.rmsnorm(x, w, 1e-6), **tol(dtype))
        r1 = torch.randn_like(x)
        r2 = r1.clone()
        torch.testing.assert_close(norm.rmsnorm(x, w, 1e-6, r1), reference.rmsnorm(x, w, 1e-6, r2), **tol(dtype))
        torch.testing.assert_close(r1, r2, **tol(dtype))


def test_silu_mul(device):
    from minisgl_backend_sgl.kernels import activation

    for dtype in dtypes(device):
        x = torch.randn(3, 2 * 200, device=device, dtype=dtype)
        torch.testing.assert_close(activation.silu_mul(x), reference.silu_mul(x), **tol(dtype))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_and_store(device, qk_norm):
    from minisgl_backend_sgl.config import RopeConfig
    from minisgl_backend_sgl.kernels import rope_store
    from minisgl_backend_sgl.rope import cos_sin_table

    heads, kv_heads, dim, n = 6, 2, 32, 9
    table = cos_sin_table(dim, RopeConfig(theta=10000.0), 64, device)
    for dtype in dtypes(device):
        qkv = torch.randn(n, (heads + 2 * kv_heads) * dim, device=device, dtype=dtype)
        positions = torch.randint(0, 64, (n,), device=device)
        slots = torch.randperm(40, device=device)[:n]
        qn = (torch.rand(dim, device=device) + 0.5).to(dtype) if qk_norm else None
        kn = (torch.rand(dim, device=device) + 0.5).to(dtype) if qk_norm else None
        outs = []
        for impl in (rope_store.rope_and_store_kv, reference.rope_and_store_kv):
            q = qkv.clone()
            k_cache = torch.full((41, kv_heads, dim), 7.0, device=device, dtype=dtype)
            v_cache = torch.full((41, kv_heads, dim), 7.0, device=device, dtype=dtype)
            impl(q, positions, slots, table, k_cache, v_cache, heads, kv_heads, dim, qn, kn, 1e-6)
            outs.append((q, k_cache, v_cache))
        for a, b in zip(*outs, strict=False):
            torch.testing.assert_close(a, b, **tol(dtype))


def _paged(device, dtype, kv_heads, dim, capacity=300):
    k = torch.randn(capacity, kv_heads, dim, device=device, dtype=dtype)
    v = torch.randn(capacity, kv_heads, dim, device=device, dtype=dtype)
    return k, v, torch.randperm(capacity, device=device)


@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 2, 16), (8, 1, 64)])
def test_extend_attention(device, heads, kv_heads, dim):
    from minisgl_backend_sgl.kernels import attention

    extend, prefix = [70, 1, 5], [0, 33, 90]
    for dtype in dtypes(device):
        k, v, perm = _paged(device, dtype, kv_heads, dim)
        seq = [p + e for p, e in zip(prefix, extend, strict=False)]
        table = torch.zeros(3, max(seq) + 5, dtype=torch.int64, device=device)
        used = 0
        for b, s in enumerate(seq):
            table[b, :s] = perm[used : used + s]
            used += s
        q = torch.randn(sum(extend), heads, dim, device=device, dtype=dtype)
        i32 = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
        starts = i32([0, extend[0], extend[0] + extend[1]])
        args = (q, k, v, table, starts, i32(extend), i32(prefix), max(extend))
        out = attention.extend_attention(*args, out=torch.full_like(q, float("nan")))
        torch.testing.assert_close(out, reference.extend_attention(*args), **tol(dtype))


@pytest.mark.parametrize("splits", [1, 3, 16])
def test_decode_attention(device, splits):
    from minisgl_backend_sgl.kernels import attention

    heads, kv_heads, dim = 8, 2, 32
    seq = [1, 64, 130, 7]
    for dtype in dtypes(device):
        k, v, perm = _paged(device, dtype, kv_heads, dim)
        table = torch.zeros(len(seq), 200, dtype=torch.int32, device=device)
        used = 0
        for b, s in enumerate(seq):
            table[b, :s] = perm[used : used + s].to(torch.int32)
            used += s
        q = torch.randn(len(seq), heads, dim, device=device, dtype=dtype)
        lens = torch.tensor(seq, dtype=torch.int32, device=device)
        out = attention.decode_attention(q, k, v, table, lens, splits, out=torch.full_like(q, float("nan")))
        torch.testing.assert_close(out, reference.decode_attention(q, k, v, table, lens, splits), **tol(dtype))


@pytest.mark.parametrize(("tokens", "experts", "top_k", "hidden", "inter"), [(20, 8, 2, 64, 32), (3, 16, 4, 48, 40), (1, 4, 1, 32, 16)])
def test_fused_moe(device, tokens, experts, top_k, hidden, inter):
    from minisgl_backend_sgl.kernels import moe

    gen = torch.Generator().manual_seed(tokens)
    for dtype in dtypes(device):
        x = torch.randn(tokens, hidden, generator=gen).to(device, dtype)
        w13 = (torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5).to(device, dtype)
        w2 = (torch.randn(experts, hidden, inter, generator=gen) / inter**0.5).to(device, dtype)
        probs = torch.rand(tokens, experts, generator=gen).softmax(-1)
        weights, ids = probs.topk(top_k, dim=-1)  # some experts get no token
        weights, ids = weights.to(device, dtype), ids.to(device)
        torch.testing.assert_close(moe.fused_moe(x, w13, w2, weights, ids),
                                   reference.fused_moe(x, w13, w2, weights, ids), **tol(dtype))


def test_fused_moe_replays_in_a_cuda_graph(device):
    """Decode graphs capture the MoE once and replay it under any routing."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA GPU")
    from minisgl_backend_sgl.kernels import moe

    tokens, experts, top_k, hidden, inter = 12, 8, 2, 64, 32
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, hidden, generator=gen).to(device)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5).to(device)
    w2 = (torch.randn(experts, hidden, inter, generator=gen) / inter**0.5).to(device)
    weights = torch.zeros(tokens, top_k, device=device)
    ids = torch.zeros(tokens, top_k, dtype=torch.int64, device=device)
    moe.fused_moe(x, w13, w2, weights, ids)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = moe.fused_moe(x, w13, w2, weights, ids)
    for seed in range(3):
        probs = torch.rand(tokens, experts, generator=torch.Generator().manual_seed(seed)).softmax(-1)
        w, i = probs.topk(top_k, dim=-1)
        weights.copy_(w.to(device))
        ids.copy_(i.to(device))
        graph.replay()
        torch.testing.assert_close(out, reference.fused_moe(x, w13, w2, weights, ids), **tol(torch.float32))


@pytest.mark.parametrize(("rows", "n", "k", "split", "bias", "gemv"),
                         [(1, 40, 64, 1, False, False), (3, 50, 96, 2, True, False), (17, 33, 80, 3, False, False),
                          (16, 64, 256, 4, True, False), (5, 48, 512, 16, False, False), (1, 40, 64, 1, True, True),
                          (3, 50, 96, 2, False, True), (4, 48, 512, 16, True, True)])
def test_skinny_gemm(device, rows, n, k, split, bias, gemv):
    """The decode projections' GEMM, tensor-core and GEMV forms (K splits summed by the last
    to arrive) against F.linear; twice, the same bits, as its arrival counts reset after each
    call."""
    from minisgl_backend_sgl.kernels.skinny_gemm import SkinnyConfig, skinny_gemm

    gen = torch.Generator().manual_seed(rows)
    for dtype in dtypes(device):
        x = torch.randn(rows, k, generator=gen).to(device, dtype)
        w = (torch.randn(n, k, generator=gen) / k**0.5).to(device, dtype)
        b = torch.randn(n, generator=gen).to(device, dtype) if bias else None
        config = SkinnyConfig(block_n=16, block_k=32, split_k=split, gemv=gemv)
        out = skinny_gemm(x, w, b, config)
        torch.testing.assert_close(out, torch.nn.functional.linear(x, w, b), **tol(dtype))
        assert torch.equal(skinny_gemm(x, w, b, config), out)


def test_skinny_gemm_replays_in_a_cuda_graph(device):
    """A captured split-K GEMM gives the eager result on every replay (the counts reset), and
    `choose` keeps whichever kernel it measured faster for each row count."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA GPU")
    from minisgl_backend_sgl.kernels import skinny_gemm

    x = torch.randn(8, 1024, device=device, dtype=torch.bfloat16)
    w = torch.randn(4096, 1024, device=device, dtype=torch.bfloat16) / 32
    config = skinny_gemm.SkinnyConfig(block_n=32, block_k=128, split_k=4)
    expected = skinny_gemm.skinny_gemm(x, w, None, config)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = skinny_gemm.skinny_gemm(x, w, None, config)
    for _ in range(3):
        graph.replay()
        assert torch.equal(out, expected)
    o_proj = [torch.randn(1024, 2048, device=device, dtype=torch.bfloat16) / 45 for _ in range(8)]
    skinny_gemm.choose(o_proj, [1, 8, 64])
    for rows in (1, 8, 64):
        x = torch.randn(rows, 2048, device=device, dtype=torch.bfloat16)
        torch.testing.assert_close(skinny_gemm.linear(x, o_proj[0]), torch.nn.functional.linear(x, o_proj[0]),
                                   **tol(torch.bfloat16))


def _sampling(seeds: torch.Tensor, steps: torch.Tensor):
    from minisgl.engine.batch import SamplingBatch

    rows = len(seeds)
    ones, zeros = torch.ones(rows, device=seeds.device), torch.zeros(rows, device=seeds.device)
    return SamplingBatch(temperature=ones, top_p=ones, top_k=zeros.long(), min_p=zeros, repetition_penalty=ones,
                         frequency_penalty=zeros, presence_penalty=zeros, seeds=seeds, steps=steps, all_greedy=False)


@pytest.mark.parametrize("rows", [2, 7])  # 2 rows: the vocabulary splits across programs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gumbel_argmax_draws_what_the_torch_sampler_draws(device, rows, dtype):
    from minisgl.engine import sampler as torch_sampler
    from minisgl_backend_sgl.kernels import sampling

    vocab = 3000  # three blocks, the last one partial
    x = (torch.randn(rows, vocab, device=device) * 2).to(dtype)
    x[:, ::3] = float("-inf")  # banned tokens (top-k, stop tokens) are never drawn
    words = torch.randint(-(1 << 31), 1 << 31, (rows, -(-vocab // 32)), dtype=torch.int32, device=device)
    seeds = torch.arange(rows, device=device) * 1000 + 7
    steps = torch.randint(0, 50, (rows,), device=device)
    temperature = torch.linspace(0.3, 1.7, rows, device=device)
    temperature[0] = 0.0  # a greedy row beside sampled ones
    batch = _sampling(seeds, steps)
    for mask in (None, words):
        got = sampling.gumbel_argmax(x, mask, temperature, batch)
        want = torch_sampler.gumbel_argmax(x, mask, temperature, batch)
        assert got.tolist() == want.tolist()
        allowed = x if mask is None else torch_sampler.bitmask_logits(x, mask)
        assert bool((allowed.gather(1, got[:, None]) > float("-inf")).all())
        assert int(got[0]) == int(allowed[0].float().argmax())


def test_gumbel_argmax_without_seeds_draws_anew_each_call(device):
    from minisgl_backend_sgl.kernels import sampling

    scaled = torch.zeros(4, 500, device=device)
    scaled[:, 100:] = float("-inf")
    unseeded = _sampling(torch.full((4,), -1, device=device), torch.zeros(4, dtype=torch.int64, device=device))
    ones = torch.ones(4, device=device)

    def draw() -> list[int]:
        return sampling.gumbel_argmax(scaled, None, ones, unseeded).tolist()

    draws = [draw() for _ in range(3)]
    assert all(0 <= t < 100 for d in draws for t in d)
    assert len({tuple(d) for d in draws}) > 1
    torch.manual_seed(3)
    again = draw()
    torch.manual_seed(3)
    assert draw() == again  # the salt comes from torch's generator


def test_bitmask_logits_bans_the_clear_bits(device):
    from minisgl.engine import sampler as torch_sampler
    from minisgl_backend_sgl.kernels import sampling

    vocab = 2085  # not a multiple of 32 nor of the block
    logits = torch.randn(5, vocab, device=device)
    words = torch.randint(-(1 << 31), 1 << 31, (5, -(-vocab // 32)), dtype=torch.int32, device=device)
    got = sampling.bitmask_logits(logits, words)
    torch.testing.assert_close(got, torch_sampler.bitmask_logits(logits, words), atol=0, rtol=0)
    assert got.data_ptr() != logits.data_ptr() and bool(torch.isfinite(logits).all())
