from minisgl.hookspecs import hookimpl
from minisgl.specs import BackendSpec


@hookimpl
def minisgl_register_backends(register):
    register(
        BackendSpec(
            name="mlx",
            description="mlx-lm models on Apple silicon (Linux CPU through mlx-cpu)",
            factory="minisgl_backend_mlx.runner:create_runner",
            probe="minisgl_backend_mlx.probe:probe",
            devices=("mps", "cpu"),
            priority=50,
        )
    )
