from typing import Annotated, Literal

import msgspec

from minisgl.hookspecs import hookimpl
from minisgl.specs import BackendSpec, SettingSpec


@hookimpl
def minisgl_register_backends(register):
    register(BackendSpec(
        name="sgl",
        description="own Qwen3/Qwen3-MoE/Qwen2/Llama code on CUDA (or --device cpu): Triton paged attention, CUDA graphs, TP",
        factory="minisgl_backend_sgl.runner:create_runner",
        probe="minisgl_backend_sgl.probe:probe",
        auto_rank={"cuda": 100},
        tensor_parallel=True,
    ))


@hookimpl
def minisgl_register_settings(register):
    register(SettingSpec(
        name="attention_backend", type=Literal["auto", "triton", "fa", "fa,triton", "triton,fa"], default="auto",
        env=("ATTENTION_BACKEND",), flags=("--attention-backend", "--attn"),
        help="attention kernels, one name for both phases or PREFILL,DECODE: triton (this package's paged Triton "
             "kernels) or fa (FlashAttention-2 as torch ships it, bf16/fp16; decode by fa runs without CUDA graphs), "
             "CUDA only; auto times both on a prefill chunk at start and keeps the faster for prefill, Triton for "
             "decode (the torch reference on the CPU). FlashInfer (fi) is not built in",
    ))
    register(SettingSpec(
        name="cuda_graph_max_bs", type=Annotated[int, msgspec.Meta(ge=0)] | None, default=None,
        env=("CUDA_GRAPH_MAX_BS",), flags=("--cuda-graph-max-bs", "--graph"),
        help="largest decode batch captured in a CUDA graph (0 disables; never above --max-running-requests)",
    ))
    register(SettingSpec(
        name="moe_backend", type=Literal["auto", "fused"], default="auto", env=("MOE_BACKEND",),
        flags=("--moe-backend",), help="routed-expert kernels of MoE models (Qwen3-MoE): fused is the Triton "
                                       "fused MoE (sorted by expert, two grouped GEMMs), CUDA only; auto picks it on "
                                       "CUDA and the torch reference on the CPU",
    ))
    register(SettingSpec(
        name="disable_pynccl", type=bool, default=True, env=("DISABLE_PYNCCL",), flags=("--disable-pynccl",),
        help="tensor-parallel all-reduces through torch.distributed instead of PyNCCL (always so)",
        unsupported="backend-sgl has no PyNCCL communicator: tensor parallelism always all-reduces through "
                    "torch.distributed (NCCL on CUDA, gloo on the CPU)",
    ))
