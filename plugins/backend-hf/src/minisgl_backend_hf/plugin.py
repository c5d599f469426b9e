from typing import Literal

from minisgl.hookspecs import hookimpl
from minisgl.specs import BackendSpec, SettingSpec


@hookimpl
def minisgl_register_backends(register):
    register(
        BackendSpec(
            name="hf",
            description="any transformers causal LM or vision-language model on CPU, MPS or CUDA; the reference for correctness",
            factory="minisgl_backend_hf.runner:create_runner",
            probe="minisgl_backend_hf.probe:probe",
            auto_rank={"cuda": 10, "mps": 10, "cpu": 10},  # below the device's own fast path
            aliases=("torch",),
            vision=True,
        )
    )


@hookimpl
def minisgl_register_settings(register):
    register(SettingSpec(
        name="matmul_precision", type=Literal["highest", "high", "medium"] | None, default=None,
        env=("MATMUL_PRECISION",), help="torch.set_float32_matmul_precision (default: leave torch's)",
    ))
    register(SettingSpec(
        name="enable_sdp", type=bool, default=True, env=("ENABLE_SDP",),
        help="use torch's scaled_dot_product_attention off CPU",
    ))
    register(SettingSpec(
        name="hf_cpu_kernels", type=bool, default=True, env=("HF_CPU_KERNELS",),
        help="on a CPU: oneDNN linears with packed weights, and decode attention in a native kernel built "
             "with the system C compiler (0: torch ops only)",
    ))
