"""Which kernels the model runs: a KernelSet of callables, picked once per runner.

- CUDA: Triton kernels of this package (the projections of decode-sized batches too, cuBLAS
  for the rest); where an ABI-compatible `sgl_kernel` imports and
  agrees with them on a smoke test, its RMSNorm and SiLU-mul are used instead.
- Attention, per phase (`--attention-backend`, one name or `PREFILL,DECODE`): `triton`, the
  paged kernels of kernels/attention.py, or `fa`, FlashAttention-2 through torch
  (kernels/flash_attention.py). `auto` times both on prefill shapes of the model's heads at
  start and serves each step by the faster for its key count (kernels/prefill_choice.py);
  decode stays on Triton, the one CUDA graphs capture.
- CPU: the torch references (for tests; backend-sgl serves on CUDA only).
The choice is logged, so a user sees which path runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

from minisgl.engine import sampler

from ..forward_meta import ForwardMeta
from . import reference

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelSet:
    name: str
    rmsnorm: Callable[..., torch.Tensor]
    silu_mul: Callable[[torch.Tensor], torch.Tensor]
    rope_and_store_kv: Callable[..., None]
    # (q [T, H, D], k_cache, v_cache, meta) -> [T, H, D], for extend (prefill) and decode steps
    extend_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, ForwardMeta], torch.Tensor]
    decode_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, ForwardMeta], torch.Tensor]
    fused_moe: Callable[..., torch.Tensor] = reference.fused_moe  # routed experts of MoE models
    linear: Callable[..., torch.Tensor] = F.linear  # (x, weight, bias): the projections
    # (projection weights, decode batch sizes): measures which kernel `linear` runs, before graph capture
    choose_linears: Callable[[list[torch.Tensor], list[int]], None] | None = None
    # the sampler's passes over the whole vocabulary (minisgl.engine.sampler.sample's `bitmask` and `draw`)
    bitmask_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = sampler.bitmask_logits
    gumbel_argmax: sampler.DrawKernel = sampler.gumbel_argmax
    attention: tuple[str, str] = ("reference", "reference")  # what serves (prefill, decode)


def paged_attention(kernels: ModuleType) -> dict[str, Callable[..., torch.Tensor]]:
    """A module's extend_attention and decode_attention (the references' or the Triton
    kernels', which take the index tensors one by one) as the KernelSet calls them."""
    def extend_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        return kernels.extend_attention(q, k_cache, v_cache, meta.page_table, meta.qo_start, meta.extend_lens,
                                        meta.prefix_lens, meta.max_extend_len)

    def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        return kernels.decode_attention(q, k_cache, v_cache, meta.page_table, meta.seq_lens, meta.decode_splits)

    return {"extend_attention": extend_attention, "decode_attention": decode_attention}


REFERENCE = KernelSet(
    name="torch reference",
    rmsnorm=reference.rmsnorm,
    silu_mul=reference.silu_mul,
    rope_and_store_kv=reference.rope_and_store_kv,
    **paged_attention(reference),
)


def triton_kernels() -> KernelSet:
    from . import activation, attention, moe, norm, rope_store, sampling, skinny_gemm

    return KernelSet(
        name="triton",
        rmsnorm=norm.rmsnorm,
        silu_mul=activation.silu_mul,
        rope_and_store_kv=rope_store.rope_and_store_kv,
        **paged_attention(attention),
        fused_moe=moe.fused_moe,
        linear=skinny_gemm.linear,
        choose_linears=skinny_gemm.choose,
        bitmask_logits=sampling.bitmask_logits,
        gumbel_argmax=sampling.gumbel_argmax,
        attention=("triton", "triton"),
    )


def _sgl_kernel_ops(device: torch.device, dtype: torch.dtype) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] | str:
    """sgl_kernel's RMSNorm and SiLU-mul wrapped to our signatures, or why they cannot be used."""
    try:
        import sgl_kernel  # type: ignore[import-not-found]
    except Exception as exc:  # missing, or built for another torch/CUDA ABI
        return f"sgl_kernel not importable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"

    def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
        if residual is None:
            return sgl_kernel.rmsnorm(x, weight, eps)
        x = x.clone()  # fused_add_rmsnorm works in place on both
        sgl_kernel.fused_add_rmsnorm(x, residual, weight, eps)
        return x

    def silu_mul(x: torch.Tensor) -> torch.Tensor:
        return sgl_kernel.silu_and_mul(x)

    try:  # a smoke test against the references: an ABI mismatch shows up here, not mid-serving
        x = torch.randn(4, 256, device=device, dtype=dtype)
        w = torch.rand(256, device=device, dtype=dtype) + 0.5
        r1, r2 = torch.randn_like(x), None
        r2 = r1.clone()
        ok = torch.allclose(rmsnorm(x, w, 1e-6, r1).float(), reference.rmsnorm(x, w, 1e-6, r2).float(), atol=2e-2, rtol=2e-2)
        g = torch.randn(4, 512, device=device, dtype=dtype)
        ok = ok and torch.allclose(silu_mul(g).float(), reference.silu_mul(g).float(), atol=2e-2, rtol=2e-2)
    except Exception as exc:
        return f"sgl_kernel imported but failed its smoke test ({type(exc).__name__}: {exc})"
    if not ok:
        return "sgl_kernel imported but disagrees with the reference RMSNorm/SiLU-mul"
    return rmsnorm, silu_mul


def attention_phases(setting: str) -> tuple[str, str]:
    """--attention-backend as (prefill, decode): one name serves both phases, `PREFILL,DECODE` each."""
    prefill, _, decode = setting.partition(",")
    return prefill, decode or prefill


def select_kernels(device: torch.device, dtype: torch.dtype, attention_backend: str = "auto",
                   moe_backend: str = "auto", heads: tuple[int, int, int] | None = None,
                   prefill_tokens: int = 8192) -> KernelSet:
    """The kernels for `device`. Attention (`--attention-backend`, per phase) and MoE models'
    experts (`--moe-backend auto` or `fused`) run in Triton or FlashAttention on CUDA, in the
    torch reference elsewhere. `heads` (query heads, KV heads, head dim of this rank) and
    `prefill_tokens` shape the prefill `auto` times."""
    prefill, decode = attention_phases(attention_backend)
    if device.type != "cuda":
        if moe_backend == "fused":
            raise ValueError("--moe-backend fused runs the Triton MoE kernel on CUDA; on the CPU backend-sgl "
                             "runs the torch reference (--moe-backend auto)")
        if attention_backend != "auto":
            raise ValueError(f"--attention-backend {attention_backend} runs on CUDA; on the CPU backend-sgl "
                             "runs the torch reference (--attention-backend auto)")
        logger.info("backend-sgl kernels: torch reference (device %s has no Triton path)", device)
        return REFERENCE
    from . import flash_attention, prefill_choice

    why_not_fa = flash_attention.unavailable(device, dtype)
    if why_not_fa and "fa" in (prefill, decode):
        raise ValueError(f"--attention-backend {attention_backend}: {why_not_fa}")
    kernels = triton_kernels()
    attention = {"triton": kernels.extend_attention, "fa": flash_attention.varlen_attention}
    if prefill == "auto" and why_not_fa is None and heads is not None:
        prefill, extend = prefill_choice.measured(attention, heads, prefill_tokens, device, dtype)
    else:
        prefill = "triton" if prefill == "auto" else prefill
        extend = attention[prefill]
    decode = "triton" if decode == "auto" else decode
    kernels = dataclasses.replace(kernels, extend_attention=extend, attention=(prefill, decode),
                                  decode_attention=flash_attention.varlen_attention if decode == "fa" else kernels.decode_attention)
    from .skinny_gemm import MAX_ROWS as skinny_rows

    sgl = _sgl_kernel_ops(device, dtype)
    if isinstance(sgl, str):
        logger.info("backend-sgl kernels: attention %s (prefill) and %s (decode); Triton RMSNorm, RoPE+KV store, SiLU-mul, "
                    "fused MoE, skinny GEMM (decode projections up to %d rows, where it measures faster than cuBLAS), "
                    "sampler bitmask and Gumbel-max; %s", prefill, decode, skinny_rows, sgl)
        return kernels
    rmsnorm, silu_mul = sgl
    logger.info("backend-sgl kernels: attention %s (prefill) and %s (decode); Triton RoPE+KV store, fused MoE, skinny "
                "GEMM (up to %d rows), sampler bitmask and Gumbel-max; sgl_kernel RMSNorm and SiLU-mul", prefill, decode, skinny_rows)
    return dataclasses.replace(kernels, name="triton+sgl_kernel", rmsnorm=rmsnorm, silu_mul=silu_mul)
