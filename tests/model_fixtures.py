"""Session-wide model fixtures, shared by every test directory through tests/conftest.py.

- `smollm2_path`: the real SmolLM2-135M-Instruct (prepared once into the minisgl cache,
  $MINISGL_CACHE_DIR or ~/.cache/minisgl, and reused by later sessions).
- `tiny_qwen3_path`, `tiny_llama_path`: tiny random models with working tokenizers.
- `tiny_llava_path`, `tiny_idefics3_path`: tiny random vision-language models with processors.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from minisgl.models import resolve_model

    return resolve_model("smollm2-135m", progress=False).path


@pytest.fixture(scope="session")
def tiny_qwen3_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from minisgl.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), arch="qwen3")


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from minisgl.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from minisgl.testing import make_tiny_vlm

    return make_tiny_vlm(tmp_path_factory.mktemp("tiny-llava"), arch="llava")


@pytest.fixture(scope="session")
def tiny_idefics3_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from minisgl.testing import make_tiny_vlm

    return make_tiny_vlm(tmp_path_factory.mktemp("tiny-idefics3"), arch="idefics3")
