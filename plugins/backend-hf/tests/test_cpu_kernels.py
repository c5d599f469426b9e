"""The CPU fast path: the native decode kernel equals attention over gathered K/V, packed
linears equal F.linear, and the runner falls back to torch ops when the kernel cannot build."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hf_harness import make_runner

from minisgl_backend_hf import cpu_kernels, cpu_linear
from minisgl_backend_hf.cpu_linear import PackedLinear, can_pack, pack_linears, slice_mlp_rows

KERNEL = cpu_kernels.paged_decode_kernel()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="no C compiler to build the CPU decode kernel")


def reference_decode(q, k, v, table, lens, scale, window, softcap):
    """softmax(q k^T) v per row over its own slots, in float32."""
    rows, heads, dim = q.shape
    kv_heads = k.shape[0]
    out = torch.empty(rows, heads, dim)
    for b in range(rows):
        n = int(lens[b])
        lo = max(0, n - window) if window else 0
        kb, vb = k[:, table[b, lo:n]].float(), v[:, table[b, lo:n]].float()
        scores = q[b].view(kv_heads, heads // kv_heads, dim) @ kb.transpose(1, 2) * scale
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        out[b] = (scores.softmax(-1) @ vb).reshape(heads, dim)
    return out


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# head sizes of a multiple of 16 take the AVX-512 path where the CPU has it: shapes it names
# (64 and 128 with up to 8 query heads per kv head), shapes it reads at run time (32, 48)
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 4, 32), (8, 1, 128), (10, 2, 48), (6, 2, 20),
                                                       (32, 2, 64)])
@pytest.mark.parametrize(("window", "softcap"), [(None, None), (37, None), (None, 30.0)])
def test_decode_kernel_equals_gathered_attention(dtype, heads, kv_heads, dim, window, softcap):
    check_against_gathered_attention(KERNEL, dtype, heads, kv_heads, dim, window, softcap)


def check_against_gathered_attention(kernel, dtype, heads, kv_heads, dim, window, softcap):
    gen = torch.Generator().manual_seed(heads * dim)
    slots, rows = 4096, 9
    k = torch.randn(kv_heads, slots, dim, generator=gen).to(dtype)
    v = torch.randn(kv_heads, slots, dim, generator=gen).to(dtype)
    lens = torch.tensor([1, 2, 16, 17, 63, 64, 65, 300, 129])  # around the kernels' 8-, 16- and 64-key blocks
    # rows of a wider page table (stride > width), each with its own scattered slots
    table = torch.stack([torch.randperm(slots, generator=gen)[:400] for _ in range(rows)])[:, :300]
    q = torch.randn(rows, heads, dim, generator=gen)
    out = torch.empty(rows, heads, dim)
    kernel(q, k, v, table, None, lens, out, 0.17, window, softcap)
    torch.testing.assert_close(out, reference_decode(q, k, v, table, lens, 0.17, window, softcap),
                               atol=2e-6, rtol=1e-5)


AVX2 = "avx2" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False


@needs_kernel
@pytest.mark.skipif(not AVX2, reason="an x86 CPU with AVX2")
def test_the_avx2_build_of_the_decode_kernel_equals_gathered_attention(tmp_path, monkeypatch):
    """Where the CPU has AVX-512 the kernel is also built without it, so its AVX2 path (8 lanes)
    is checked on every x86 machine."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "CFLAGS", [*cpu_kernels.CFLAGS, "-mno-avx512f"])
    kernel = cpu_kernels.PagedDecodeKernel(ctypes.CDLL(str(cpu_kernels._build())))
    assert kernel.vector_path(9, 3, 64) and kernel.vector_path(10, 2, 40)
    assert not kernel.vector_path(6, 2, 20) and not kernel.vector_path(32, 2, 64)  # head size; 16 heads a group
    for dtype in (torch.float32, torch.bfloat16):
        for heads, kv_heads, dim in [(9, 3, 64), (8, 1, 128), (10, 2, 40), (6, 2, 20)]:
            for window, softcap in [(None, None), (37, None), (None, 30.0)]:
                check_against_gathered_attention(kernel, dtype, heads, kv_heads, dim, window, softcap)


@needs_kernel
@pytest.mark.parametrize("window", [None, 5])
def test_a_prompts_tokens_attend_causally_as_rows_that_share_its_table_row(window):
    """A prefill chunk as decode rows: token j of a prompt after a cached prefix is a row with
    context prefix + j + 1, and every row reads the prompt's one page-table row."""
    gen = torch.Generator().manual_seed(3)
    heads, kv_heads, dim, slots = 9, 3, 64, 1024
    k = torch.randn(kv_heads, slots, dim, generator=gen).to(torch.bfloat16)
    v = torch.randn(kv_heads, slots, dim, generator=gen).to(torch.bfloat16)
    pages = torch.stack([torch.randperm(slots, generator=gen)[:64] for _ in range(2)])  # two requests
    # request 1: 20 new tokens after a prefix of 7; request 0: one decode token at length 40
    table_rows = torch.tensor([0] + [1] * 20)
    lens = torch.tensor([40] + list(range(8, 28)))
    q = torch.randn(21, heads, dim, generator=gen)
    out = torch.empty(21, heads, dim)
    KERNEL(q, k, v, pages, table_rows, lens, out, 0.125, window, None)
    expected = reference_decode(q, k, v, pages.index_select(0, table_rows), lens, 0.125, window, None)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)


@needs_kernel
def test_loading_the_kernel_keeps_subnormal_floats():
    """The library is built with -ffast-math but must not switch the process to flush-to-zero
    (that broke msgspec's gt=0 checks and hypothesis in the same process)."""
    assert KERNEL is not None
    tiny = 5e-324  # the smallest subnormal double
    assert tiny > 0.0 and tiny * 2 > tiny
    assert torch.tensor(1e-40, dtype=torch.float32).item() > 0


@needs_kernel
def test_decode_kernel_refuses_groups_larger_than_its_accumulator():
    k = torch.zeros(1, 8, 256)
    q, out = torch.zeros(1, 64, 256), torch.empty(1, 64, 256)
    with pytest.raises(ValueError, match="64 query heads over 1 kv heads"):
        KERNEL(q, k, k, torch.zeros(1, 1, dtype=torch.long), None, torch.ones(1, dtype=torch.long), out, 1.0, None,
               None)


@pytest.mark.skipif(not can_pack(torch.float32), reason="torch built without oneDNN")
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 48), (22, 48), (3, 300, 48), (1, 0, 48)])
def test_packed_linear_equals_linear(bias, shape):
    linear = torch.nn.Linear(48, 80, bias=bias).requires_grad_(False)
    x = torch.randn(*shape)
    torch.testing.assert_close(PackedLinear(linear)(x), F.linear(x, linear.weight, linear.bias),
                               atol=1e-5, rtol=1e-5)


def test_pack_linears_swaps_nested_linears_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()))
    assert pack_linears(model) == 2
    assert [type(m).__name__ for m in model.modules()].count("PackedLinear") == 2
    assert pack_linears(model) == 0  # nothing left to swap


class GatedMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = (torch.nn.Linear(8, 16), torch.nn.Linear(8, 16),
                                                        torch.nn.Linear(16, 8))
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[-2])
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def test_mlps_take_long_inputs_in_row_slices_with_the_same_result(monkeypatch):
    monkeypatch.setattr(cpu_linear, "MLP_ROWS", 4)
    model = torch.nn.ModuleDict({"mlp": GatedMLP(), "other": torch.nn.Linear(8, 8)})
    x = torch.randn(1, 10, 8)
    with torch.inference_mode():
        whole = model["mlp"](x)
        assert slice_mlp_rows(model) == 1
        torch.testing.assert_close(model["mlp"](x), whole)
        model["mlp"](x[:, :3])
    assert model["mlp"].calls == [10, 4, 4, 2, 3]


@needs_kernel
def test_runner_uses_the_cpu_kernels_and_can_turn_them_off(tiny_llama_path, caplog):
    with caplog.at_level(logging.INFO, logger="minisgl_backend_hf"):
        fast = make_runner(tiny_llama_path, hf_cpu_kernels=True)
    assert fast.context.decode_kernel is KERNEL
    assert any(isinstance(m, PackedLinear) for m in fast.model.modules())
    assert "decode native CPU kernel, in place" in caplog.text
    assert fast.decoder is not None and "Forward: the lean CPU decoder" in caplog.text
    plain = make_runner(tiny_llama_path, hf_cpu_kernels=False)
    assert plain.context.decode_kernel is None
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    assert plain.decoder is None


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoder_ops_compute_what_transformers_modules_compute(dtype):
    """RMSNorm and rotary embeddings round where transformers rounds: bit for bit in bf16."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

    ops = cpu_kernels.decoder_ops(dtype)
    gen = torch.Generator().manual_seed(0)
    norm = LlamaRMSNorm(96, eps=1e-5).to(dtype)
    norm.weight.data = torch.randn(96, generator=gen).to(dtype)
    x = torch.randn(40, 2 * 96, generator=gen).to(dtype)[:, :96]  # strided rows
    torch.testing.assert_close(ops.rms_norm(x, norm.weight, 1e-5), norm(x), atol=2e-6, rtol=0)

    tokens, heads, kv_heads, dim, slots = 20, 6, 2, 32, 300
    q, k, v = (torch.randn(tokens, n, dim, generator=gen).to(dtype) for n in (heads, kv_heads, kv_heads))
    freqs = torch.arange(tokens)[:, None] * 10000 ** (-torch.arange(0, dim, 2) / dim)[None]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    want_q, want_k = apply_rotary_pos_emb(q.transpose(0, 1), k.transpose(0, 1), cos, sin, unsqueeze_dim=0)
    where = torch.randperm(slots, generator=gen)[:tokens]
    k_pool, v_pool = torch.zeros(kv_heads, slots, dim, dtype=dtype), torch.zeros(kv_heads, slots, dim, dtype=dtype)
    ops.rope_store(q, k, v, cos.float(), sin.float(), where, k_pool, v_pool)
    torch.testing.assert_close(q, want_q.transpose(0, 1), atol=2e-6, rtol=0)
    torch.testing.assert_close(k, want_k.transpose(0, 1), atol=2e-6, rtol=0)
    torch.testing.assert_close(k_pool[:, where], want_k, atol=2e-6, rtol=0)
    torch.testing.assert_close(v_pool[:, where], v.transpose(0, 1), atol=0, rtol=0)
    assert k_pool.abs().sum(-1).count_nonzero() == tokens * kv_heads  # nothing written elsewhere


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 4, 7, 8, 13, 16])
@pytest.mark.parametrize("epilogue", ["none", "swish", "mul", "add"])
def test_the_few_row_linear_equals_linear_with_its_epilogue(dtype, rows, epilogue):
    """float32 (csrc/gemv.c) up to 4 rows; bf16 (csrc/rows_bf16.c) any number, in groups of 8."""
    ops = cpu_kernels.decoder_ops(dtype)
    if not ops.gemv_rows:
        pytest.skip("bf16 weights need AVX512-BF16 for the few-row kernel")
    if dtype == torch.float32 and rows > cpu_kernels.GEMV_ROWS:
        pytest.skip("the float32 kernel takes at most 4 rows")
    gen = torch.Generator().manual_seed(rows)
    in_features, out_features = 75, 38  # neither a multiple of the kernel's vector or block
    x = torch.randn(rows, 2 * in_features, generator=gen).to(dtype)[:, :in_features]  # strided rows
    weight = torch.randn(out_features, in_features, generator=gen).to(dtype)
    bias = torch.randn(out_features, generator=gen).to(dtype)
    other = torch.randn(rows, out_features, generator=gen).to(dtype)
    want = x.float() @ weight.float().T + bias.float()
    want = {"none": want, "swish": F.silu(want), "mul": want * other.float(), "add": want + other.float()}[epilogue]
    packed = cpu_kernels.pack_gemv_weight(weight)
    got = ops.gemv(x, packed, out_features, bias, epilogue, other if epilogue in ("mul", "add") else None)
    tol = 1e-5 if dtype == torch.float32 else 2**-7  # bf16: one rounding of the result
    torch.testing.assert_close(got.float(), want, atol=tol * want.abs().max().item(), rtol=0)
    if dtype == torch.float32:
        with pytest.raises(ValueError, match="at most 4"):
            ops.gemv(torch.zeros(5, in_features, dtype=dtype), packed, out_features, None)


def test_the_lean_decoder_names_what_it_does_not_take(tiny_llama_path, tiny_qwen3_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from minisgl_backend_hf.cpu_decoder import unsupported_reason

    config = AutoConfig.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_config(config)
    assert unsupported_reason(model) == "linear layers not packed for oneDNN"
    config.hidden_act = "gelu"
    assert unsupported_reason(AutoModelForCausalLM.from_config(config)) == "activation 'gelu'"
    qwen3 = AutoConfig.from_pretrained(tiny_qwen3_path)
    qwen3.use_sliding_window, qwen3.sliding_window = True, 16
    assert unsupported_reason(AutoModelForCausalLM.from_config(qwen3)) == "a sliding window"


def test_without_a_compiler_the_runner_stays_on_torch_ops(tiny_llama_path, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cached build to fall back on
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    builds = (cpu_kernels._library, cpu_kernels.paged_decode_kernel, cpu_kernels.decoder_ops)
    for cached in builds:
        cached.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="minisgl_backend_hf"):
            assert cpu_kernels.paged_decode_kernel() is None
            runner = make_runner(tiny_llama_path)
        assert "native kernels are unavailable" in caplog.text
        assert runner.context.decode_kernel is None and runner.decoder is None
        assert "Forward: transformers' modules" in caplog.text
    finally:
        for cached in builds:
            cached.cache_clear()
