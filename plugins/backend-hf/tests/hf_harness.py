"""Build an HFModelRunner for tests; the batch helpers (slot allocator, requests, ForwardBatch
builder) are minisgl.runner_testing's, shared by every backend's tests."""

from __future__ import annotations

from types import SimpleNamespace

from minisgl.runner_testing import Request, SlotAllocator, greedy_sampling, make_batch  # noqa: F401 - re-exported
from minisgl.settings import Settings
from minisgl_backend_hf.runner import HFModelRunner, create_runner


def make_runner(
    path: str, dtype: str = "float32", num_pages: int | None = 512, page_size: int = 1, **overrides
) -> HFModelRunner:
    overrides.setdefault("device", "cpu")
    plugin_values = {name: overrides.pop(name) for name in list(overrides) if name not in Settings.__struct_fields__}
    settings = Settings(dtype=dtype, num_pages=num_pages, page_size=page_size, plugin_values=plugin_values,
                        **overrides)
    return create_runner(settings, SimpleNamespace(path=path, dummy=False, name=path.rstrip("/").split("/")[-1]))
