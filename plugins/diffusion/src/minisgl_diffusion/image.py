"""Text-to-image with any diffusers pipeline (Z-Image-Turbo by default)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .runner import DiffusionRunner, StepCallback, check_common, check_positive, check_prompt, check_side, new_seed

log = logging.getLogger("minisgl.diffusion")

MAX_IMAGES = 10  # OpenAI's bound on n
# Z-Image-Turbo is distilled for 9 scheduler steps (8 DiT forwards) without CFG
Z_IMAGE_STEPS = 9
Z_IMAGE_GUIDANCE = 0.0
Z_IMAGE_SIDE = 1024


@dataclass
class GeneratedImages:
    images: list[Any]  # PIL.Image.Image, one per requested image
    seeds: list[int]  # seeds[i] regenerates images[i] alone
    model: str  # the pipeline directory that drew them
    seconds: float


class ImageRunner(DiffusionRunner):
    default_model_field = "image_model_id"

    def generate(
        self,
        prompt: str,
        *,
        n: int = 1,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        model: str | None = None,
        on_step: StepCallback | None = None,
    ) -> GeneratedImages:
        """Draw `n` images; unset options take the pipeline's own defaults (Z-Image-Turbo's
        9 steps, guidance 0 and 1024x1024 for Z-Image)."""
        check_prompt(prompt)
        check_positive("n", n, MAX_IMAGES)
        check_common(steps, width, height, guidance_scale)
        loaded = self.pipeline(model)
        pipe = loaded.pipe
        if self.is_z_image(pipe):
            steps = steps or Z_IMAGE_STEPS
            guidance_scale = Z_IMAGE_GUIDANCE if guidance_scale is None else guidance_scale
            width, height = width or Z_IMAGE_SIDE, height or Z_IMAGE_SIDE
            check_side("width", width, 16)
            check_side("height", height, 16)
        seed = new_seed() if seed is None else seed
        base = {"prompt": prompt, "num_images_per_prompt": n, "generator": self.generators(seed, n), "output_type": "pil"}
        optional = {"width": width, "height": height, "num_inference_steps": steps, "guidance_scale": guidance_scale,
                    "negative_prompt": negative_prompt}
        kwargs = self.call_kwargs(pipe, base, optional, steps, on_step)
        log.info("image: %d x %s, %s steps, seed %d, model %s", n, f"{width or '?'}x{height or '?'}", steps or "default",
                 seed, loaded.source)
        started = time.perf_counter()
        with loaded.lock:
            images = list(pipe(**kwargs).images)
        seconds = time.perf_counter() - started
        log.info("image: %d image(s) in %.2fs", len(images), seconds)
        return GeneratedImages(images, [seed + i for i in range(n)], loaded.source, seconds)
