"""What the image and video runners share: which model a request means (settings and the
seed's env vars), the pipeline cache, seeded generators, step callbacks and input checks."""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InvalidDiffusionRequest
from .pipelines import LoadedPipeline, LoadOptions, PipelineCache, require_diffusers, resolve_source

log = logging.getLogger("minisgl.diffusion")

StepCallback = Callable[[int, int], None]  # (steps done, total steps)
MAX_SIDE = 4096


def check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidDiffusionRequest("prompt must be a non-empty string", param="prompt")
    return prompt


def check_positive(name: str, value: int | None, upper: int) -> None:
    if value is not None and not (1 <= value <= upper):
        raise InvalidDiffusionRequest(f"{name} must be between 1 and {upper}, got {value}", param=name)


def check_side(name: str, value: int | None, multiple: int) -> None:
    if value is None:
        return
    if not (multiple <= value <= MAX_SIDE) or value % multiple:
        raise InvalidDiffusionRequest(
            f"{name} must be a multiple of {multiple} between {multiple} and {MAX_SIDE}, got {value}", param=name
        )


def check_common(steps: int | None, width: int | None, height: int | None, guidance_scale: float | None) -> None:
    """The checks every generation request shares (images and videos)."""
    check_positive("steps", steps, 1000)
    check_side("width", width, 8)
    check_side("height", height, 8)
    if guidance_scale is not None and guidance_scale < 0:
        raise InvalidDiffusionRequest(f"guidance_scale must be >= 0, got {guidance_scale}", param="guidance_scale")


def new_seed() -> int:
    return secrets.randbits(31)


class DiffusionRunner:
    """Base of ImageRunner and VideoRunner. `settings` is a minisgl Settings (or None for
    defaults from the environment); the load options are fixed per runner."""

    default_model_field = "image_model_id"

    def __init__(
        self,
        settings: Any = None,
        *,
        device: str | None = None,
        attention_backend: str | None = None,
        compile: bool = False,
        cpu_offload: bool = False,
        cache: PipelineCache | None = None,
    ) -> None:
        require_diffusers()
        if settings is None:
            from minisgl.settings import load_settings

            settings, _ = load_settings()
        self.settings = settings
        settings_device = getattr(settings, "device", "auto")
        self.options = LoadOptions(device or settings_device, attention_backend, compile, cpu_offload)
        self.cache = cache or PipelineCache()

    # -- which model ------------------------------------------------------------------

    def default_model(self) -> str:
        """IMAGE_MODEL_ID / VIDEO_MODEL_ID when set; images fall back to Z_IMAGE_MODEL_ID."""
        chosen = getattr(self.settings, self.default_model_field, None)
        if chosen:
            return chosen
        if self.default_model_field == "image_model_id":
            return self.settings.z_image_model_id
        raise InvalidDiffusionRequest(
            "no video model: set VIDEO_MODEL_ID (--video-model) or name one in the request's 'model'", param="model"
        )

    def configured_model(self) -> str | None:
        """The model this runner was configured with, or None: IMAGE_MODEL_ID / VIDEO_MODEL_ID,
        and for images also Z_IMAGE_MODEL_DIR (a local Z-Image checkpoint, which means
        Z_IMAGE_MODEL_ID). The server serves only a configured model: with None it answers
        that image/video generation is not configured, and loads or downloads nothing
        (`default_model`'s Z-Image fallback is for the `minisgl image` command)."""
        chosen = getattr(self.settings, self.default_model_field, None)
        if chosen:
            return chosen
        if self.default_model_field == "image_model_id" and getattr(self.settings, "z_image_model_dir", None):
            return self.settings.z_image_model_id
        return None

    def configure_hint(self) -> str:
        """What to set so that configured_model() is not None."""
        if self.default_model_field == "image_model_id":
            return ("set IMAGE_MODEL_ID (--image-model) to a diffusers pipeline directory or hub id, or "
                    "Z_IMAGE_MODEL_DIR to a local Z-Image checkpoint")
        return "set VIDEO_MODEL_ID (--video-model) to a diffusers text-to-video pipeline directory or hub id"

    def _model_dir(self, model: str) -> str | None:
        """Z_IMAGE_MODEL_DIR for the Z-Image model (falling back to MODEL_LOCAL_DIR when that
        holds a diffusers pipeline, as the original z_image_mps.py does)."""
        if model != self.settings.z_image_model_id:
            return None
        if self.settings.z_image_model_dir:
            return self.settings.z_image_model_dir
        local = getattr(self.settings, "model_local_dir", None)
        if local and (Path(local).expanduser() / "model_index.json").is_file():
            return local
        return None

    def pipeline(self, model: str | None = None) -> LoadedPipeline:
        name = model or self.default_model()
        source = resolve_source(name, self._model_dir(name), self.settings.z_image_cache_dir)
        return self.cache.get(source, self.options)

    # -- calling a pipeline -----------------------------------------------------------

    @staticmethod
    def generators(seed: int, count: int) -> list[Any]:
        """One CPU generator per output, seeded seed, seed+1, ...: output i under seed s equals
        output 0 under seed s+i, and results do not depend on the device's RNG."""
        import torch

        return [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(count)]

    @staticmethod
    def step_kwargs(pipe: Any, steps: int | None, on_step: StepCallback | None) -> dict[str, Any]:
        """Hook `on_step` into whichever step callback the pipeline offers."""
        if on_step is None:
            return {}
        params = inspect.signature(pipe.__call__).parameters
        default_steps = params["num_inference_steps"].default if "num_inference_steps" in params else 0
        total = steps or default_steps

        if "callback_on_step_end" in params:
            def on_step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                on_step(step + 1, getattr(_pipe, "num_timesteps", None) or total)
                return tensors

            return {"callback_on_step_end": on_step_end}
        if "callback" in params:
            def legacy(step: int, _timestep: Any, _latents: Any) -> None:
                on_step(step + 1, total)

            return {"callback": legacy, "callback_steps": 1}
        return {}

    def call_kwargs(self, pipe: Any, base: dict[str, Any], optional: dict[str, Any], steps: int | None,
                    on_step: StepCallback | None) -> dict[str, Any]:
        """`base` plus the `optional` arguments this pipeline takes (unset ones left to its
        defaults), plus the step callback."""
        kwargs = dict(base)
        kwargs.update({k: v for k, v in optional.items() if v is not None and self.accepts(pipe, k)})
        kwargs.update(self.step_kwargs(pipe, steps, on_step))
        return kwargs

    @staticmethod
    def accepts(pipe: Any, name: str) -> bool:
        return name in inspect.signature(pipe.__call__).parameters

    @staticmethod
    def is_z_image(pipe: Any) -> bool:
        return type(pipe).__name__.startswith("ZImage")
