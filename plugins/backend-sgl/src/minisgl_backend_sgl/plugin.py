from minisgl.hookspecs import hookimpl
from minisgl.specs import BackendSpec


@hookimpl
def minisgl_register_backends(register):
    register(BackendSpec(
        name="sgl",
        description="own Qwen3/Qwen2/Llama code on CUDA: Triton paged attention, CUDA graphs, TP",
        factory="minisgl_backend_sgl.runner:create_runner",
        probe="minisgl_backend_sgl.probe:probe",
        devices=("cuda",),
        priority=100,
    ))
