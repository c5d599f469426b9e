"""The CPU fast path: the native decode kernel equals attention over gathered K/V, packed
linears equal F.linear, and the runner falls back to torch ops when the kernel cannot build."""

from __future__ import annotations

import logging

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
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 4, 32), (8, 1, 128), (6, 2, 20)])
@pytest.mark.parametrize(("window", "softcap"), [(None, None), (37, None), (None, 30.0)])
def test_decode_kernel_equals_gathered_attention(dtype, heads, kv_heads, dim, window, softcap):
    gen = torch.Generator().manual_seed(heads * dim)
    slots, rows = 4096, 7
    k = torch.randn(kv_heads, slots, dim, generator=gen).to(dtype)
    v = torch.randn(kv_heads, slots, dim, generator=gen).to(dtype)
    lens = torch.tensor([1, 2, 63, 64, 65, 300, 129])  # around the kernel's 64-key blocks
    # rows of a wider page table (stride > width), each with its own scattered slots
    table = torch.stack([torch.randperm(slots, generator=gen)[:400] for _ in range(rows)])[:, :300]
    q = torch.randn(rows, heads, dim, generator=gen)
    out = torch.empty(rows, heads, dim)
    KERNEL(q, k, v, table, lens, out, 0.17, window, softcap)
    torch.testing.assert_close(out, reference_decode(q, k, v, table, lens, 0.17, window, softcap),
                               atol=2e-6, rtol=1e-5)


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
        KERNEL(q, k, k, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, dtype=torch.long), out, 1.0, None, None)


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
    plain = make_runner(tiny_llama_path, hf_cpu_kernels=False)
    assert plain.context.decode_kernel is None
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())


def test_without_a_compiler_attention_stays_on_torch_ops(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cached build to fall back on
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    cpu_kernels.paged_decode_kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="minisgl_backend_hf"):
            assert cpu_kernels.paged_decode_kernel() is None
        assert "native kernel is unavailable" in caplog.text
    finally:
        cpu_kernels.paged_decode_kernel.cache_clear()
