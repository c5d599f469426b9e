"""`minisgl image -p "prompt"`: the original mini-sglang's z_image_mps.py CLI (registered in plugin.py).
Generates images with the ImageRunner, saves PNGs and prints their paths."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import click

DEFAULT_PROMPT = (
    "Young Chinese woman in red Hanfu with intricate embroidery, holding a folding fan, "
    "soft outdoor night lighting, cinematic and detailed."
)
# width x height; multiples of 16 as Z-Image needs
ASPECT_RATIOS = {
    "1:1": (1024, 1024),
    "16:9": (1280, 720),
    "9:16": (720, 1280),
    "4:3": (1088, 816),
    "3:4": (816, 1088),
}


def _load_runner_class():
    from .probe import probe

    reason = probe()
    if reason:
        raise click.ClickException(f"the diffusers-image runner cannot run here: {reason}")
    from .image import ImageRunner

    return ImageRunner


def _slug(model: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", Path(model.rstrip("/")).name.lower()).strip("-") or "image"


@click.command(context_settings={"show_default": True})
@click.option("-p", "--prompt", default=DEFAULT_PROMPT, help="text prompt")
@click.option("--negative-prompt", default=None, help="what the image should not show")
@click.option("--aspect", type=click.Choice(list(ASPECT_RATIOS)), default="1:1",
              help="size preset (WxH: " + ", ".join(f"{k}={w}x{h}" for k, (w, h) in ASPECT_RATIOS.items()) + ")")
@click.option("--height", type=click.IntRange(min=8), default=None, help="overrides the aspect preset's height")
@click.option("--width", type=click.IntRange(min=8), default=None, help="overrides the aspect preset's width")
@click.option("--num-images", type=click.IntRange(1, 10), default=1, help="images to generate")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="image i uses seed+i (default: random, printed)")
@click.option("-s", "--steps", type=click.IntRange(min=1), default=None, help="denoising steps (default: 9 for Z-Image, else the pipeline's)")
@click.option("--guidance-scale", type=click.FloatRange(min=0.0), default=None, help="CFG scale (default: 0.0 for Z-Image-Turbo, else the pipeline's)")
@click.option("--device", type=click.Choice(["auto", "mps", "cuda", "cpu"]), default="auto", help="auto picks MPS -> CUDA -> CPU")
@click.option("--attention-backend", type=click.Choice(["sdpa", "flash2", "flash3"]), default=None, help="attention kernels of the DiT")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the denoiser (slow first run)")
@click.option("--cpu-offload", is_flag=True, help="offload idle submodels to CPU (CUDA only)")
@click.option("--model", default=None, help="hub id or local diffusers pipeline dir (default: IMAGE_MODEL_ID, else Z_IMAGE_MODEL_ID)")
@click.option("--model-dir", default=None, help="local checkpoint dir (default: Z_IMAGE_MODEL_DIR, else Z_IMAGE_CACHE_DIR/<name>)")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), default="output", help="where PNGs are written")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default=None, help="default: LOG_LEVEL or INFO")
def image(prompt: str, negative_prompt: str | None, aspect: str, height: int | None, width: int | None, num_images: int,
          seed: int | None, steps: int | None, guidance_scale: float | None, device: str, attention_backend: str | None,
          compile_: bool, cpu_offload: bool, model: str | None, model_dir: str | None, output_dir: str,
          log_level: str | None) -> None:
    """Generate images from a prompt and save them as PNGs (paths go to stdout)."""
    import msgspec

    from minisgl.cli import setup_logging
    from minisgl.settings import SettingsError, load_settings

    try:
        settings, _ = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    setup_logging(log_level or settings.log_level)
    chosen = model or settings.image_model_id or settings.z_image_model_id
    # the runner applies --model-dir (Z_IMAGE_MODEL_DIR) to its Z-Image model: make that the chosen one
    settings = msgspec.structs.replace(settings, plugin_values=settings.plugin_values | {
        "image_model_id": None, "z_image_model_id": chosen, "z_image_model_dir": model_dir or settings.z_image_model_dir,
    })
    preset_width, preset_height = ASPECT_RATIOS[aspect]
    runner_class = _load_runner_class()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .errors import DiffusionError

    console = Console(stderr=True)
    try:
        runner = runner_class(settings, device=device, attention_backend=attention_backend, compile=compile_,
                              cpu_offload=cpu_offload)
        with console.status(f"loading {chosen}"):
            runner.pipeline()
        with Progress(TextColumn("[bold]denoising"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("steps", total=steps)

            def on_step(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            result = runner.generate(
                prompt, n=num_images, width=width or preset_width, height=height or preset_height, steps=steps,
                guidance_scale=guidance_scale, seed=seed, negative_prompt=negative_prompt, on_step=on_step,
            )
    except DiffusionError as exc:
        raise click.ClickException(exc.message) from None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = _slug(chosen)
    for picture, image_seed in zip(result.images, result.seeds, strict=True):
        path = out / f"{name}-{stamp}-seed{image_seed}.png"
        picture.save(path)
        sys.stdout.write(f"{path}\n")
    console.print(f"[{len(result.images)} image(s) in {result.seconds:.2f}s, seed {result.seeds[0]}]")
