"""RMSNorm in Triton, optionally fused with the residual add that precedes it.

Rounding follows transformers: the residual sum is rounded to the model dtype, the norm is
computed in float32, rounded, then scaled by the weight in the model dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .pdl import wait_previous


@triton.jit
def _rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr,
    stride_x, stride_res, stride_out,
    n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    wait_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(r.dtype)
        tl.store(res_ptr + row * stride_res + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = (xf * inv_rms).to(w.dtype) * w
    tl.store(out_ptr + row * stride_out + cols, y, mask=mask)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """norm(x) (or, with `residual`, residual += x in place and return norm(residual)). x: [T, N]."""
    n_rows, n_cols = x.shape
    out = torch.empty_like(x)
    if n_rows == 0:
        return out
    block = triton.next_power_of_2(n_cols)
    num_warps = min(max(block // 256, 1), 16)
    _rmsnorm_kernel[(n_rows,)](
        x, residual if residual is not None else x, weight, out,
        x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0),
        n_cols, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=num_warps, **pdl.launch_options(x.device),
    )
    return out
