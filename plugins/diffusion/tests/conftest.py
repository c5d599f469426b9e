from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from minisgl_diffusion.testing import make_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_image_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pipeline(tmp_path_factory.mktemp("tiny-image"), kind="image")


@pytest.fixture(scope="session")
def tiny_video_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pipeline(tmp_path_factory.mktemp("tiny-video"), kind="video")


@pytest.fixture(scope="session")
def settings(tiny_image_pipeline: Path, tiny_video_pipeline: Path):
    from minisgl.settings import load_settings

    loaded, _ = load_settings(environ={
        "IMAGE_MODEL_ID": str(tiny_image_pipeline),
        "VIDEO_MODEL_ID": str(tiny_video_pipeline),
        "DEVICE": "cpu",
    })
    return loaded
