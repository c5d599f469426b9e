"""Models without a network: built-in real model, architecture presets, local dirs, hub ids.

`resolve_model("qwen3-0.6b").path` is a local directory (config + tokenizer, random
weights); `resolve_model("smollm2-135m")` prepares the real SmolLM2-135M-Instruct once.
"""

from __future__ import annotations

from .cache import cache_dir
from .errors import HubUnavailableError, InvalidModelDirectoryError, MissingDependencyError, ModelNotFoundError
from .resolve import ModelInfo, ResolvedModel, default_model, list_models, resolve_model

__all__ = [
    "HubUnavailableError",
    "InvalidModelDirectoryError",
    "MissingDependencyError",
    "ModelInfo",
    "ModelNotFoundError",
    "ResolvedModel",
    "cache_dir",
    "default_model",
    "list_models",
    "resolve_model",
]
