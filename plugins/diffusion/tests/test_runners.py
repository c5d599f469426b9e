from __future__ import annotations

import numpy as np
import pytest

from minisgl_diffusion.errors import DiffusionUnavailable, InvalidDiffusionRequest
from minisgl_diffusion.image import ImageRunner
from minisgl_diffusion.probe import probe
from minisgl_diffusion.video import VideoRunner


@pytest.fixture(scope="module")
def image_runner(settings) -> ImageRunner:
    return ImageRunner(settings)


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def test_probe_says_available_when_diffusers_is_installed():
    assert probe() is None


def test_images_have_the_asked_count_and_size(image_runner: ImageRunner):
    steps = []
    result = image_runner.generate("a red fox", n=3, width=32, height=24, steps=2, seed=7,
                                   on_step=lambda done, total: steps.append((done, total)))
    assert [image.size for image in result.images] == [(32, 24)] * 3
    assert result.seeds == [7, 8, 9]
    assert steps[-1] == (2, 2)


def test_same_seed_same_pixels_other_seed_other_pixels(image_runner: ImageRunner):
    first = pixels(image_runner.generate("a red fox", n=2, width=32, height=32, steps=2, seed=11).images)
    again = pixels(image_runner.generate("a red fox", n=2, width=32, height=32, steps=2, seed=11).images)
    other = pixels(image_runner.generate("a red fox", n=1, width=32, height=32, steps=2, seed=12).images)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])
    # image i under seed s is image 0 under seed s + i
    assert np.array_equal(first[1], other[0])
    assert len(image_runner.cache) == 1  # one pipeline, loaded once


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"prompt": "  "}, "prompt"),
    ({"n": 0}, "n"),
    ({"n": 11}, "n"),
    ({"width": 30}, "width"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
])
def test_bad_input_names_the_field(image_runner: ImageRunner, kwargs, param):
    args = {"prompt": "a fox", "width": 32, "height": 32, "steps": 1} | kwargs
    with pytest.raises(InvalidDiffusionRequest) as info:
        image_runner.generate(args.pop("prompt"), **args)
    assert info.value.param == param
    assert info.value.kind.value == "invalid_request"


def test_a_missing_model_directory_is_a_clear_error(image_runner: ImageRunner, tmp_path):
    with pytest.raises(DiffusionUnavailable, match="model_index.json") as info:
        image_runner.generate("a fox", model=str(tmp_path / "nope"), width=32, height=32)
    assert info.value.param == "model"


def test_video_frames_are_deterministic(settings):
    runner = VideoRunner(settings)
    first = runner.generate("waves", num_frames=3, width=32, height=32, steps=2, seed=1)
    again = runner.generate("waves", num_frames=3, width=32, height=32, steps=2, seed=1)
    other = runner.generate("waves", num_frames=3, width=32, height=32, steps=2, seed=2)
    assert len(first.frames) == 3 and first.frames[0].size == (32, 32)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(first.frames), pixels(again.frames), strict=True))
    assert not np.array_equal(pixels(first.frames)[0], pixels(other.frames)[0])


def test_an_image_pipeline_is_not_a_video_model(settings, tiny_image_pipeline):
    with pytest.raises(InvalidDiffusionRequest, match="not a text-to-video pipeline"):
        VideoRunner(settings).generate("waves", model=str(tiny_image_pipeline), width=32, height=32, steps=1)
