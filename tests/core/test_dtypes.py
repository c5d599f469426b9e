"""`--dtype auto`, one rule for every backend and benchmark."""

from types import SimpleNamespace

import pytest
import torch

from minisgl import dtypes


@pytest.mark.parametrize(("saved", "device", "native_bf16", "want"), [
    ("bfloat16", "cpu", True, torch.bfloat16),
    ("bfloat16", "cpu", False, torch.float32),  # AVX2 only: bf16 would be emulated
    ("float16", "cpu", True, torch.bfloat16),
    ("float16", "cpu", False, torch.float32),
    ("float32", "cpu", False, torch.float32),
    (None, "cpu", True, torch.float32),
    ("float32", "cuda", False, torch.float16),
    ("bfloat16", "cuda", False, torch.bfloat16),
    (torch.float16, "mps", False, torch.float16),
])
def test_auto_keeps_the_checkpoint_dtype_within_what_the_device_runs_fast(monkeypatch, saved, device, native_bf16,
                                                                           want):
    monkeypatch.setattr(dtypes, "cpu_has_native_bf16", lambda: native_bf16)
    assert dtypes.resolve_dtype("auto", SimpleNamespace(dtype=saved), device) == want


def test_a_named_dtype_is_taken_as_is_and_a_wrong_one_is_named():
    config = SimpleNamespace(torch_dtype="bfloat16")
    assert dtypes.checkpoint_dtype(config) == torch.bfloat16
    assert dtypes.resolve_dtype("float16", config, "cpu") == torch.float16
    with pytest.raises(ValueError, match="--dtype must be auto, float32, float16, bfloat16, got 'fp8'"):
        dtypes.resolve_dtype("fp8", config, "cpu")
