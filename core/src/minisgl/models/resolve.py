"""Resolve a model name to a local transformers directory, offline where possible.

Order: the built-in real model (`smollm2-135m`), the architecture presets, an existing
local directory, and last a hub id.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import hub, smollm2
from .cache import build_once, prepared_model_dir
from .errors import InvalidModelDirectoryError
from .presets import load_presets, write_preset

logger = logging.getLogger(__name__)

ModelKind = Literal["builtin", "preset", "local", "hub"]


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    path: str  # local directory: config.json + tokenizer files (+ weights unless dummy)
    dummy: bool  # weights are random (presets, or dummy_weight=True)
    kind: ModelKind

    @property
    def takes_images(self) -> bool:
        return is_vision_model(self.path)


def is_vision_model(model_path: str) -> bool:
    """A transformers vision-language checkpoint: its config has a vision tower."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config.get("vision_config"), dict)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: ModelKind
    description: str
    ready: bool  # already prepared on disk
    path: str  # where it lives (or will live) once prepared


def _looks_like_path(name: str) -> bool:
    # hub ids are `name` or `org/name`; anything else with a separator is meant as a path
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _local(name: str, dummy_weight: bool) -> ResolvedModel:
    path = Path(name).expanduser().resolve()
    if not path.is_dir():
        raise InvalidModelDirectoryError(f"model path {name!r}: no such directory; {hub.offline_alternatives()}")
    if not (path / "config.json").is_file():
        raise InvalidModelDirectoryError(
            f"model path {name!r} is a directory but has no config.json, so it is not a transformers model"
        )
    return ResolvedModel(name=name, path=str(path), dummy=dummy_weight, kind="local")


def resolve_model(name_or_path: str, *, dummy_weight: bool = False, progress: bool = True) -> ResolvedModel:
    """Return a local directory for `name_or_path`, preparing built-in models on first use.

    `progress` shows a status on stderr while downloading or converting.
    Raises `ModelNotFoundError` (a ValueError) when nothing matches; its message names
    the models that work offline.
    """
    name = name_or_path.strip()
    if not name:
        raise InvalidModelDirectoryError(f"empty model name; {hub.offline_alternatives()}")
    if name == smollm2.NAME:
        path = build_once(name, lambda out: smollm2.prepare(out, progress=progress))
        return ResolvedModel(name=name, path=str(path), dummy=dummy_weight, kind="builtin")
    presets = load_presets()
    if name in presets:
        path = build_once(name, lambda out: write_preset(presets[name], out))
        return ResolvedModel(name=name, path=str(path), dummy=True, kind="preset")
    if Path(name).expanduser().is_dir() or _looks_like_path(name):
        return _local(name, dummy_weight)
    path = hub.download(name)
    return ResolvedModel(name=name, path=path, dummy=dummy_weight, kind="hub")


@functools.cache  # one probe and one log line per process, however often settings load
def default_model(default: str) -> tuple[str, str | None]:
    """The model to run when the user named none: `default` where it can be had here, else
    the embedded real model, so that a bare `minisgl serve` works offline. Returns the
    model's name and, when it is the embedded one, why `default` could not be used."""
    if default == smollm2.NAME or default in load_presets() or _looks_like_path(default) or Path(default).is_dir():
        return default, None  # local by nature: `resolve_model` reports a problem with it
    reason = hub.unavailable_reason(default)
    if reason is None:
        return default, None
    logger.warning("no model named and the default %s is unavailable (%s): running the embedded %s instead",
                   default, reason, smollm2.NAME)
    return smollm2.NAME, reason


def list_models() -> list[ModelInfo]:
    """The built-in models (the real one and the presets) and whether each is prepared."""
    infos = []
    real = prepared_model_dir(smollm2.NAME)
    infos.append(ModelInfo(smollm2.NAME, "builtin", smollm2.DESCRIPTION, real.is_dir(), str(real)))
    for preset in load_presets().values():
        path = prepared_model_dir(preset.name)
        infos.append(ModelInfo(preset.name, "preset", preset.description, path.is_dir(), str(path)))
    return infos
