"""Build an MLXModelRunner for tests; the batch helpers (slot allocator, requests, ForwardBatch
builder) are minisgl.runner_testing's, shared by every backend's tests."""

from __future__ import annotations

from pathlib import Path

import torch

from minisgl.models import ResolvedModel
from minisgl.runner_testing import Request, SlotAllocator, greedy_sampling, make_batch  # noqa: F401 - re-exported
from minisgl.settings import settings_from_kwargs
from minisgl_backend_mlx.runner import MLXModelRunner, create_runner


def make_runner(
    path: str, dtype: str = "float32", num_pages: int | None = 512, dummy: bool = False, **overrides
) -> MLXModelRunner:
    overrides.setdefault("device", "cpu")
    settings = settings_from_kwargs(backend="mlx", dtype=dtype, num_pages=num_pages, **overrides)
    return create_runner(settings, ResolvedModel(name=Path(path).name, path=path, dummy=dummy, kind="local"))


def random_tokens(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
