"""Models without a network: built-in real model, architecture presets, local dirs, hub ids.

    >>> from minisgl.models import resolve_model
    >>> resolve_model("qwen3-0.6b").path   # config + tokenizer, random weights
"""

from __future__ import annotations

from .cache import cache_dir
from .errors import HubUnavailableError, InvalidModelDirectoryError, MissingDependencyError, ModelNotFoundError
from .resolve import ModelInfo, ResolvedModel, list_models, resolve_model

__all__ = [
    "HubUnavailableError",
    "InvalidModelDirectoryError",
    "MissingDependencyError",
    "ModelInfo",
    "ModelNotFoundError",
    "ResolvedModel",
    "cache_dir",
    "list_models",
    "resolve_model",
]
