"""Text-to-video with any diffusers text-to-video pipeline (VIDEO_MODEL_ID)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .errors import InvalidDiffusionRequest
from .runner import DiffusionRunner, StepCallback, check_common, check_positive, check_prompt, new_seed

log = logging.getLogger("minisgl.diffusion")

MAX_FRAMES = 256


@dataclass
class GeneratedVideo:
    frames: list[Any]  # PIL.Image.Image per frame
    seed: int
    model: str
    seconds: float


def to_pil_frames(frames: Any) -> list[Any]:
    """The first video of a pipeline's output as PIL images, whatever form it came in:
    a list of PIL lists, or an array/tensor of shape (batch, frames, H, W, C) in [0, 1]."""
    import numpy as np
    from PIL import Image

    video = frames[0]
    if isinstance(video, list) and video and isinstance(video[0], Image.Image):
        return list(video)
    array = video.detach().float().cpu().numpy() if hasattr(video, "detach") else np.asarray(video)
    if array.ndim != 4:
        raise ValueError(f"expected frames shaped (frames, H, W, C), got {array.shape}")
    if array.shape[-1] not in (1, 3, 4) and array.shape[1] in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)  # (frames, C, H, W) -> channels last
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return [Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame) for frame in array]


class VideoRunner(DiffusionRunner):
    default_model_field = "video_model_id"

    def generate(
        self,
        prompt: str,
        *,
        num_frames: int | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        model: str | None = None,
        on_step: StepCallback | None = None,
    ) -> GeneratedVideo:
        check_prompt(prompt)
        check_positive("num_frames", num_frames, MAX_FRAMES)
        check_common(steps, width, height, guidance_scale)
        loaded = self.pipeline(model)
        pipe = loaded.pipe
        if not self.accepts(pipe, "num_frames"):
            raise InvalidDiffusionRequest(
                f"{type(pipe).__name__} at {loaded.source} is not a text-to-video pipeline (it takes no num_frames)",
                param="model",
            )
        seed = new_seed() if seed is None else seed
        base = {"prompt": prompt, "generator": self.generators(seed, 1)[0], "output_type": "pil"}
        optional = {"num_frames": num_frames, "width": width, "height": height, "num_inference_steps": steps,
                    "guidance_scale": guidance_scale, "negative_prompt": negative_prompt}
        kwargs = self.call_kwargs(pipe, base, optional, steps, on_step)
        log.info("video: %s frames %s, %s steps, seed %d, model %s", num_frames or "default",
                 f"{width or '?'}x{height or '?'}", steps or "default", seed, loaded.source)
        started = time.perf_counter()
        with loaded.lock:
            frames = to_pil_frames(pipe(**kwargs).frames)
        seconds = time.perf_counter() - started
        log.info("video: %d frames in %.2fs", len(frames), seconds)
        return GeneratedVideo(frames, seed, loaded.source, seconds)
