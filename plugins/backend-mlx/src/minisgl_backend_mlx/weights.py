"""Build an mlx-lm model from a local transformers directory.

mlx-lm reads Hugging Face safetensors (`model*.safetensors`) directly and renames what it
must in each architecture's `sanitize()`. Directories whose weights come in another form
(`pytorch_model*.bin`, oddly named safetensors) are converted once through transformers and
the safetensors copy is cached under MLX_CACHE_DIR, keyed by the source files, so later
runs load straight from the cache. Random weights (`--dummy-weight`, presets) are mlx's own
initialisation under a fixed seed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import _get_classes, load_config, load_model

logger = logging.getLogger(__name__)

DUMMY_WEIGHT_SEED = 0  # random weights are the same on every run
MLX_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
# files a converted copy carries over next to its weights
_SIDE_FILES = ("config.json", "generation_config.json")


def legacy_rope_config(config: dict[str, Any]) -> dict[str, Any]:
    """Overrides that let mlx-lm read a transformers>=5 config.

    transformers 5 writes `rope_parameters: {rope_theta, rope_type, ...}` where older
    configs (and mlx-lm's llama/qwen ModelArgs) have `rope_theta` and `rope_scaling`.
    Without this, mlx-lm would silently fall back to its default base of 10000.
    """
    params = config.get("rope_parameters")
    if not isinstance(params, dict) or "rope_theta" not in params:
        return {}  # absent, or nested per layer type: left to the architecture
    overrides: dict[str, Any] = {}
    if "rope_theta" not in config:
        overrides["rope_theta"] = params["rope_theta"]
    if config.get("rope_scaling") is None and params.get("rope_type", "default") != "default":
        overrides["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return overrides


def _has_mlx_readable_weights(path: Path) -> bool:
    return any(path.glob("model*.safetensors"))


def _source_key(path: Path) -> str:
    """Names, sizes and modification times of the source files: a new checkpoint, a new key."""
    digest = hashlib.sha256(str(path).encode())
    for file in sorted(path.iterdir()):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def converted_dir(path: Path, cache_dir: str, trust_remote_code: bool) -> Path:
    """A directory mlx-lm can read for `path`: a cached safetensors conversion, made once."""
    out = Path(cache_dir).expanduser() / f"{path.name}-{_source_key(path)}"
    if _has_mlx_readable_weights(out):
        logger.info("Using converted mlx weights cached at %s", out)
        return out
    from transformers import AutoModelForCausalLM

    logger.info("Converting %s to safetensors for mlx-lm (once; cached at %s)", path, out)
    model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))  # safetensors
    for name in _SIDE_FILES:
        if (path / name).is_file() and not (staging / name).exists():
            shutil.copy2(path / name, staging / name)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # a crash mid-conversion never leaves a half-written cache entry
    return out


def _random_model(path: Path, overrides: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    config = load_config(path)
    config.update(overrides)
    model_class, args_class = _get_classes(config)
    mx.random.seed(DUMMY_WEIGHT_SEED)
    model = model_class(args_class.from_dict(config))
    model.eval()
    mx.eval(model.parameters())
    return model, config


def load_mlx_model(
    path: str, *, dummy: bool, dtype: str, cache_dir: str, trust_remote_code: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """The mlx-lm model for a transformers directory and its (mlx-lm) config dict."""
    source = Path(path)
    overrides = legacy_rope_config(load_config(source))
    if dummy:
        logger.info("Building %s with random mlx weights (seed %d)", source.name, DUMMY_WEIGHT_SEED)
        model, config = _random_model(source, overrides)
    else:
        weights_dir = (
            source if _has_mlx_readable_weights(source) else converted_dir(source, cache_dir, trust_remote_code)
        )
        logger.info("Loading mlx-lm weights from %s", weights_dir)
        model, config = load_model(weights_dir, model_config=overrides, trust_remote_code=trust_remote_code)
    if dtype == "auto":  # the checkpoint's dtype, as mlx-lm does; random weights take the config's
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "auto") if dummy else "auto"
    if dtype in MLX_DTYPES:
        model.set_dtype(MLX_DTYPES[dtype])
        mx.eval(model.parameters())
    return model, config
