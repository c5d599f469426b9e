import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False (run plugins/backend-sgl/gpu/check.py on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
