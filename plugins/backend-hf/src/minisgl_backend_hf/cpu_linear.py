"""Linear layers on a CPU: oneDNN with weights packed once at load, and MLPs that take a
long prefill in slices of rows.

torch's CPU `F.linear` calls MKL's sgemm with the weight as stored. For decode shapes (a few
dozen rows against a weight that streams from DRAM) oneDNN with the weight pre-packed into
its blocked layout runs faster, and about as fast at prefill shapes (BENCHMARKS.md); vLLM's
CPU build takes the same route. A packed weight is opaque, so packing happens after the
model is loaded.

A prefill of thousands of tokens makes the MLP's intermediates ([tokens, intermediate] each)
tens of MB, so every pass over them goes to DRAM; the MLP acts on each row alone, so taking
it in slices of MLP_ROWS rows keeps them in cache (faster, BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from minisgl.dtypes import cpu_has_native_bf16

from .cpu_kernels import pack_gemv_weight

# the hint oneDNN picks the packed layout for: decode batch sizes, where the gain is
PACK_FOR_ROWS = 32
MLP_ROWS = 1024


class PackedLinear(nn.Module):
    """nn.Linear's forward on a oneDNN-packed copy of the weight."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_FOR_ROWS)
        # the few-row kernel's copy (csrc/gemv.c, csrc/rows_bf16.c); the runner drops it where that kernel does not run
        self.gemv_weight: torch.Tensor | None = pack_gemv_weight(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, oneDNN"


def can_pack(dtype: torch.dtype) -> bool:
    """float32 always where oneDNN is built in; bfloat16 only with native bf16 instructions."""
    if not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_has_native_bf16())


def pack_linears(model: nn.Module) -> int:
    """Swap every plain nn.Linear under `model` for a PackedLinear; returns how many. A weight
    shared with an embedding (tied LM head) stays for the embedding, the packed copy is extra."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
                swapped += 1
    return swapped


def slice_mlp_rows(model: nn.Module) -> int:
    """Make each dense MLP (a module with gate/up/down projections) take more than MLP_ROWS
    tokens in slices; returns how many MLPs."""
    wrapped = 0
    for module in model.modules():
        if all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj")):
            module.forward = _in_row_slices(module.forward)
            wrapped += 1
    return wrapped


def _in_row_slices(forward):
    def sliced(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] <= MLP_ROWS:
            return forward(x)
        return torch.cat([forward(part) for part in x.split(MLP_ROWS, dim=-2)], dim=-2)

    return sliced
