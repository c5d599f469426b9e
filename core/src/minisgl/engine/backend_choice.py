"""Which backend runs a model: the one named, or `--backend auto`'s pick for the device
(logged with why each other installed backend was not taken), and its runner."""

from __future__ import annotations

import logging
import platform

import torch

from ..models import ResolvedModel
from ..plugins import Registry
from ..settings import Settings
from ..specs import BackendSpec
from .batch import ModelRunner

log = logging.getLogger("minisgl.engine")


def detect_device(settings: Settings) -> str:
    if settings.device != "auto":
        return settings.device
    if torch.cuda.is_available():
        return "cuda"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"


def select_backend(settings: Settings, registry: Registry, vision: bool = False) -> tuple[BackendSpec, str]:
    """The backend spec to use and a sentence saying why. `--backend auto` takes the
    available backend that ranks itself highest on the device (BackendSpec.auto_rank); for a
    vision-language model (`vision`), VLM_BACKEND when set, else the best of the backends
    that run those."""
    named, flag = settings.backend, "--backend / BACKEND_IMPL"
    if vision and named == "auto" and settings.vlm_backend != "auto":
        named, flag = settings.vlm_backend, "VLM_BACKEND"
    if named != "auto":
        spec = registry.get("backend", named)
        assert isinstance(spec, BackendSpec)
        if vision and not spec.vision:
            raise RuntimeError(f"backend {spec.name!r} ({flag}) runs text models only and this model is a "
                               "vision-language model; use --backend hf")
        reason = spec.availability(settings)
        if reason is not None:
            raise RuntimeError(f"backend {spec.name!r} ({flag}) cannot run here: {reason}")
        return spec, f"{flag.split(' ')[0]} {named}"
    device = detect_device(settings)
    specs = [s for s in registry.backends() if s.vision or not vision]
    ranked = sorted((s for s in specs if device in s.auto_rank), key=lambda s: (-s.auto_rank[device], s.name))
    chosen: BackendSpec | None = None
    skipped: dict[str, str] = {}
    for spec in ranked:
        why_not = spec.availability(settings)
        if why_not is None:
            chosen = spec
            break
        skipped[spec.name] = why_not
    # say why every other installed backend was not taken
    for other in specs:
        if other is chosen or other.name in skipped:
            continue
        why_not = other.availability(settings)
        if why_not is None and device not in other.auto_rank:
            why_not = f"available, but not ranked for --backend auto on {device} (ask for --backend {other.name})"
        elif why_not is None:
            why_not = f"available, but auto prefers {chosen.name} on {device}"
        skipped[other.name] = why_not
    note = "; ".join(f"{name}: {why}" for name, why in skipped.items())
    if chosen is None:
        known = ", ".join(s.name for s in specs) or "none installed"
        if vision:
            known += "; minisgl-backend-hf runs vision-language models"
        raise RuntimeError(f"no backend can run {'this vision-language model ' if vision else ''}on {device} "
                           f"(installed: {known}); {note}")
    for name, why in skipped.items():
        log.info("backend %s skipped: %s", name, why)
    return chosen, f"auto on {device}: {chosen.name}" + (f" (skipped {note})" if note else "")


def load_runner(settings: Settings, registry: Registry, model: ResolvedModel) -> tuple[ModelRunner, str, str]:
    """The chosen backend's runner for `model`, the backend's name and why it was chosen."""
    spec, reason = select_backend(settings, registry, vision=model.takes_images)
    if settings.tp_size > 1 and not spec.tensor_parallel:
        able = [b.name for b in registry.backends() if b.tensor_parallel]
        raise ValueError(f"--tp-size {settings.tp_size}: backend {spec.name} runs on one device; tensor "
                         f"parallelism needs --backend {' or '.join(able) or '(none installed)'}")
    log.info("backend: %s (%s)", spec.name, reason)
    return spec.load()(settings, model), spec.name, reason
