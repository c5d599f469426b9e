"""Finding, loading and caching diffusers pipelines: one pipeline per (model, device, options),
loaded on first use and kept, with a lock so concurrent requests never share a pipeline's
mutable scheduler state mid-call."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DiffusionUnavailable, InvalidDiffusionRequest

log = logging.getLogger("minisgl.diffusion")

DEVICES = ("auto", "mps", "cuda", "cpu")
# z-image-mps's --attention-backend names -> diffusers' attention dispatcher names
ATTENTION_BACKENDS = {"sdpa": "native", "flash2": "flash", "flash3": "_flash_3"}


def require_diffusers() -> None:
    for module in ("torch", "diffusers", "PIL"):
        if importlib.util.find_spec(module) is None:
            package = "Pillow" if module == "PIL" else module
            raise DiffusionUnavailable(
                f"image and video generation need {package}: pip install minisgl-diffusion (or pip install {package})"
            )


def pick_device(preferred: str = "auto") -> tuple[str, Any]:
    """The device and dtype to run on: MPS -> CUDA -> CPU for auto (bfloat16 on accelerators,
    float32 on CPU), or the one asked for if it exists here."""
    import torch

    if preferred not in DEVICES:
        raise InvalidDiffusionRequest(f"device must be one of {', '.join(DEVICES)}, got {preferred!r}", param="device")
    mps = torch.backends.mps.is_available()
    cuda = torch.cuda.is_available()
    if preferred == "auto":
        preferred = "mps" if mps else "cuda" if cuda else "cpu"
    elif preferred == "mps" and not mps:
        raise DiffusionUnavailable("device mps was asked for but torch.backends.mps.is_available() is False", param="device")
    elif preferred == "cuda" and not cuda:
        raise DiffusionUnavailable("device cuda was asked for but torch.cuda.is_available() is False", param="device")
    return preferred, (torch.float32 if preferred == "cpu" else torch.bfloat16)


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(model))


def _is_pipeline_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def resolve_source(model: str, model_dir: str | None = None, cache_dir: str = "~/.cache/mini-sglang") -> str:
    """A local diffusers pipeline directory for `model`.

    `model` may be a local directory (used as is) or a hub id. For a hub id, `model_dir`
    (else `cache_dir/<repo name in lower case>`, as z_image_mps.py does) is used when it
    already holds a pipeline; otherwise the snapshot is downloaded there."""
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not _is_pipeline_dir(path):
            raise DiffusionUnavailable(
                f"model {model!r} is not a diffusers pipeline directory (no model_index.json in {path})", param="model"
            )
        return str(path)
    target = Path(model_dir).expanduser() if model_dir else Path(cache_dir).expanduser() / model.split("/")[-1].lower()
    if _is_pipeline_dir(target):
        return str(target)
    log.info("downloading %s from the hub into %s", model, target)
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=model, local_dir=str(target))
    except Exception as exc:
        raise DiffusionUnavailable(
            f"cannot load {model!r}: not found in {target} and the hub download failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Point Z_IMAGE_MODEL_DIR / --model-dir "
            "at a local diffusers pipeline directory (one holding model_index.json), or pass that directory as the model",
            param="model",
        ) from exc
    return str(target)


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"
    attention_backend: str | None = None  # sdpa | flash2 | flash3 (or a diffusers backend name)
    compile: bool = False
    cpu_offload: bool = False


def _denoiser(pipe: Any) -> Any:
    return getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)


def load_pipeline(source: str, options: LoadOptions) -> Any:
    import torch  # noqa: F401  (diffusers needs it; import errors surface here clearly)
    from diffusers import DiffusionPipeline

    device, dtype = pick_device(options.device)
    if options.cpu_offload and device != "cuda":
        raise InvalidDiffusionRequest("--cpu-offload works on CUDA only", param="cpu_offload")
    started = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)  # callers draw their own progress
    if options.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    denoiser = _denoiser(pipe)
    if options.attention_backend:
        backend = ATTENTION_BACKENDS.get(options.attention_backend, options.attention_backend)
        if denoiser is None or not hasattr(denoiser, "set_attention_backend"):
            raise InvalidDiffusionRequest(
                f"{type(pipe).__name__} does not support choosing the attention backend", param="attention_backend"
            )
        denoiser.set_attention_backend(backend)
    if options.compile and denoiser is not None:
        denoiser.compile()
    log.info(
        "loaded %s from %s on %s (%s) in %.1fs",
        type(pipe).__name__, source, device, str(dtype).removeprefix("torch."), time.perf_counter() - started,
    )
    return pipe


@dataclass
class LoadedPipeline:
    pipe: Any
    source: str
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time


class PipelineCache:
    """Pipelines by (source, options), each loaded once, lazily. Loads of different models
    may run side by side; two requests for the same model wait for one load."""

    def __init__(self) -> None:
        self._pipelines: dict[tuple[str, LoadOptions], LoadedPipeline] = {}
        self._loading: dict[tuple[str, LoadOptions], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, source: str, options: LoadOptions) -> LoadedPipeline:
        key = (source, options)
        with self._guard:
            if key in self._pipelines:
                return self._pipelines[key]
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:
            if key not in self._pipelines:
                loaded = LoadedPipeline(load_pipeline(source, options), source)
                with self._guard:
                    self._pipelines[key] = loaded
            return self._pipelines[key]

    def __len__(self) -> int:
        return len(self._pipelines)
