"""The dtype a model runs in: `--dtype` by name, and what `auto` means on each device. One
rule for every backend and every benchmark, so a model is measured in the dtype it is served in."""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The dtype the checkpoint was saved in (`dtype` in transformers 5, `torch_dtype` before)."""
    for name in ("dtype", "torch_dtype"):
        value = getattr(config, name, None)
        if isinstance(value, torch.dtype):
            return value
        if isinstance(value, str) and value in DTYPES:
            return DTYPES[value]
    return None


def cpu_has_native_bf16() -> bool:
    """AVX512 (with or without its BF16 extension) or AMX: oneDNN runs bf16 GEMMs at full rate.
    On AVX2 alone bf16 is emulated, several times slower than float32."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def auto_dtype(config: Any, device_type: str) -> torch.dtype:
    """The checkpoint's dtype, within what the device runs fast: a CPU takes fp16 checkpoints in
    bf16 and bf16 in float32 where it has no native bf16; a GPU serves float32 checkpoints in fp16."""
    saved = checkpoint_dtype(config) or torch.float32
    chosen = saved
    if device_type == "cpu":
        if chosen == torch.float16:
            chosen = torch.bfloat16
        if chosen == torch.bfloat16 and not cpu_has_native_bf16():
            chosen = torch.float32
    elif device_type in ("cuda", "mps") and saved == torch.float32:
        chosen = torch.float16
    if chosen != saved:
        logger.info("--dtype auto: %s for a %s checkpoint on %s%s", _name(chosen), _name(saved), device_type,
                    " (this CPU has no native bf16)" if device_type == "cpu" and chosen == torch.float32 else "")
    return chosen


def resolve_dtype(requested: str, config: Any, device_type: str) -> torch.dtype:
    """`--dtype`: a name from DTYPES, or `auto` (see auto_dtype)."""
    if requested == "auto":
        return auto_dtype(config, device_type)
    if requested not in DTYPES:
        raise ValueError(f"--dtype must be auto, {', '.join(DTYPES)}, got {requested!r}")
    return DTYPES[requested]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
