from typing import Annotated

import msgspec

from minisgl.hookspecs import hookimpl
from minisgl.specs import BackendSpec, SettingSpec


@hookimpl
def minisgl_register_backends(register):
    register(
        BackendSpec(
            name="mlx",
            description="mlx-lm models on Apple silicon (Linux CPU through mlx-cpu)",
            factory="minisgl_backend_mlx.runner:create_runner",
            probe="minisgl_backend_mlx.probe:probe",
            auto_rank={"mps": 50},  # on Linux CPU only when asked for: --backend mlx
        )
    )


@hookimpl
def minisgl_register_settings(register):
    positive = Annotated[int, msgspec.Meta(ge=1)]
    non_negative = Annotated[int, msgspec.Meta(ge=0)]
    for env, type_, default, help_ in [
        ("MLX_CACHE_DIR", str, "~/.cache/mini_sglang/mlx", "where converted weights are cached"),
        ("MLX_TRUST_REMOTE_CODE", bool, False, "let mlx-lm run a model's own code (TRUST_REMOTE_CODE also does)"),
        ("MLX_PREFILL_STEP_SIZE", positive, 2048, "most new tokens one model call takes (the engine's prefill chunk)"),
        ("MLX_MAX_KV_SIZE", non_negative, 0, "hard cap on the KV pool's token slots (0 = off)"),
        ("AGGRESSIVE_MAX_NEW_TOKENS", bool, False,
         "cap each request's max_new_tokens at its fair share of the KV pool, so a full batch never retracts"),
    ]:
        register(SettingSpec(name=env.lower(), type=type_, default=default, env=(env,), help=help_))
