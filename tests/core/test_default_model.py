"""No model named and the default unavailable offline: the embedded model runs, said in one
log line; a model the user named that cannot be found stays an error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from minisgl.models import default_model, smollm2
from minisgl.settings import DEFAULT_MODEL, load_settings


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "MODEL_LOCAL_DIR")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture
def fresh_probe():
    default_model.cache_clear()
    yield
    default_model.cache_clear()


def test_unreachable_hub_falls_back_and_says_why(fresh_probe, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    settings, sources = load_settings(environ={})
    assert settings.model_path == smollm2.NAME
    assert sources["model_path"].startswith(f"default ({DEFAULT_MODEL} unavailable") and "unreachable" in sources["model_path"]


def test_named_model_never_falls_back(fresh_probe, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    settings, sources = load_settings(environ={"MODEL_NAME": DEFAULT_MODEL})
    assert settings.model_path == DEFAULT_MODEL and sources["model_path"] == "env MODEL_NAME"


def test_the_offline_api_with_no_model_takes_the_same_default(fresh_probe, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from minisgl.settings import settings_from_kwargs

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("MODEL_NAME", raising=False)
    assert settings_from_kwargs(model=None).model_path == smollm2.NAME  # LLM() passes model=None
    assert settings_from_kwargs(model="qwen3-0.6b").model_path == "qwen3-0.6b"


@pytest.mark.timeout(600)
def test_generate_with_no_model_runs_the_embedded_one_offline() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "minisgl", "generate", "--chat", "--max-new-tokens", "8", "The capital of France is"],
        capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), proc.stderr
    fallback = [line for line in proc.stderr.splitlines() if f"running the embedded {smollm2.NAME}" in line]
    assert len(fallback) == 1 and DEFAULT_MODEL in fallback[0] and "HF_HUB_OFFLINE" in fallback[0], proc.stderr


@pytest.mark.timeout(120)
def test_generate_with_an_unknown_named_model_fails_naming_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "minisgl", "generate", "--model-path", "minisgl-tests/no-such-model", "hi"],
        capture_output=True, text=True, timeout=120, env=_env(),
    )
    assert proc.returncode != 0
    assert "minisgl-tests/no-such-model" in proc.stderr and "running the embedded" not in proc.stderr
