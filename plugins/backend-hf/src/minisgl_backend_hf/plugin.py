from minisgl.hookspecs import hookimpl
from minisgl.specs import BackendSpec


@hookimpl
def minisgl_register_backends(register):
    register(
        BackendSpec(
            name="hf",
            description="any transformers causal LM on CPU, MPS or CUDA; the reference for correctness",
            factory="minisgl_backend_hf.runner:create_runner",
            probe="minisgl_backend_hf.probe:probe",
            devices=("cpu", "mps", "cuda"),
            priority=0,
            aliases=("torch",),
        )
    )
