"""Weights: streamed from safetensors one tensor at a time, or random (--dummy-weight).

Checkpoint names are transformers'; ours differ only where layers are fused:
q_proj/k_proj/v_proj -> qkv_proj (shards 'q', 'k', 'v'), gate_proj/up_proj -> gate_up_proj
(shards 0, 1). Each parameter's `weight_loader` keeps its tensor-parallel slice, and reads
only that slice from the file: checkpoint tensors come as CheckpointTensor, read on narrow().
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

_FUSED: tuple[tuple[str, str, str | int], ...] = (
    (".q_proj.", ".qkv_proj.", "q"),
    (".k_proj.", ".qkv_proj.", "k"),
    (".v_proj.", ".qkv_proj.", "v"),
    (".gate_proj.", ".gate_up_proj.", 0),
    (".up_proj.", ".gate_up_proj.", 1),
)
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


# Qwen3-MoE's experts, one tensor each, go into the stacked w13 (gate | up) and w2
_EXPERT = re.compile(r"^(.*\.mlp)\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")


def map_weight_name(name: str, tie_word_embeddings: bool) -> tuple[str, str | int | None] | None:
    """Checkpoint tensor name -> (our parameter name, shard id), or None for tensors we skip."""
    if name.endswith(_IGNORED_SUFFIXES):
        return None
    if m := _EXPERT.match(name):
        prefix, expert, which = m.groups()
        if which == "down":
            return f"{prefix}.w2", expert
        return f"{prefix}.w13", f"{expert}.{0 if which == 'gate' else 1}"
    if name == "lm_head.weight" and tie_word_embeddings:
        return None  # tied: the LM head is the embedding matrix
    for old, new, shard in _FUSED:
        if old in name:
            return name.replace(old, new), shard
    return name, None


def expected_loads(model: nn.Module) -> set[tuple[str, str | int | None]]:
    """Every (parameter, shard) a complete checkpoint must provide."""
    needed: set[tuple[str, str | int | None]] = set()
    for name, param in model.named_parameters():
        if hasattr(param, "shards"):
            needed.update((name, s) for s in param.shards)
        elif ".qkv_proj." in name:
            needed.update((name, s) for s in ("q", "k", "v"))
        elif ".gate_up_proj." in name:
            needed.update((name, s) for s in (0, 1))
        else:
            needed.add((name, None))
    return needed


def safetensors_files(model_dir: str | Path) -> list[Path]:
    path = Path(model_dir)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors weights in {str(path)!r}; backend-sgl reads safetensors only "
            "(use --dummy-weight for random weights, or --backend hf for other formats)"
        )
    return files


class CheckpointTensor:
    """A tensor of a safetensors file, not read yet: `narrow` reads one slice of it."""

    def __init__(self, part: Any) -> None:
        self._part = part
        self.shape = tuple(part.get_shape())

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        index = [slice(None)] * len(self.shape)
        index[dim] = slice(start, start + length)
        return self._part[tuple(index)]

    def numel(self) -> int:
        return math.prod(self.shape)


def iter_checkpoint(model_dir: str | Path) -> Iterator[tuple[str, CheckpointTensor]]:
    from safetensors import safe_open

    for file in safetensors_files(model_dir):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, CheckpointTensor(f.get_slice(name))


def load_weights(model: nn.Module, tensors: Iterator[tuple[str, Any]], tie_word_embeddings: bool) -> None:
    """Copy each checkpoint tensor (its rank's slice) into its parameter, in the parameter's
    dtype; fail on unknown or missing ones."""
    params = dict(model.named_parameters())
    loaded: set[tuple[str, str | int | None]] = set()
    start = time.perf_counter()
    for ckpt_name, tensor in tensors:
        mapped = map_weight_name(ckpt_name, tie_word_embeddings)
        if mapped is None:
            continue
        name, shard = mapped
        param = params.get(name)
        if param is None:
            raise KeyError(f"checkpoint tensor {ckpt_name!r} (as {name!r}) has no parameter in backend-sgl's model")
        param.weight_loader(tensor, shard)
        loaded.add((name, shard))
    missing = expected_loads(model) - loaded
    if missing:
        shown = ", ".join(sorted(f"{n}[{s}]" if s is not None else n for n, s in missing)[:8])
        raise KeyError(f"checkpoint is missing {len(missing)} tensors: {shown}")
    total_bytes = sum(p.numel() * p.element_size() for p in params.values())
    logger.info("Loaded %.2f GiB of weights (this rank's) in %.1f s", total_bytes / 1024**3, time.perf_counter() - start)


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights for speed work: small uniform values (norm weights near 1), deterministic."""
    gen_device = next(model.parameters()).device
    generator = torch.Generator(device=gen_device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.uniform_(0.9, 1.1, generator=generator)
        else:
            param.uniform_(-0.02, 0.02, generator=generator)
    logger.info("Initialised random weights (--dummy-weight, seed %d)", seed)
