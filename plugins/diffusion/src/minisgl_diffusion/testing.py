"""Tiny random diffusers pipelines for tests, built offline in seconds.

`make_tiny_pipeline(path, kind="image")` saves a StableDiffusionPipeline and
`kind="video"` a TextToVideoSDPipeline (the ModelScope text-to-video architecture: a 3D
UNet over frames) with a few thousand random weights each. Both load back through
`DiffusionPipeline.from_pretrained(path)` exactly like a real checkpoint, so the runners
are tested along the same path users take. The images they draw are noise; what tests
check is shape, determinism under a seed and the plumbing around the pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

PipelineKind = Literal["image", "video"]

# CLIP's byte-level BPE needs a vocabulary covering every byte; with no merges each
# character becomes its own token, which is all a random text encoder needs.
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> list[str]:
    """The printable stand-ins GPT-2/CLIP BPE use for the 256 byte values."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = visible[:]
    extra = 0
    for b in range(256):
        if b not in visible:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def _write_clip_tokenizer_files(directory: Path) -> int:
    """Write vocab.json and merges.txt; returns the vocabulary size."""
    directory.mkdir(parents=True, exist_ok=True)
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + list(_SPECIAL_TOKENS)
    vocab = {token: index for index, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(vocab)


def _tiny_text_stack(workdir: Path) -> tuple[Any, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_size = _write_clip_tokenizer_files(workdir / "tokenizer-src")
    tokenizer = CLIPTokenizer(
        vocab_file=str(workdir / "tokenizer-src" / "vocab.json"),
        merges_file=str(workdir / "tokenizer-src" / "merges.txt"),
        model_max_length=16,
    )
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=16,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config).eval(), tokenizer


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def _image_pipeline(text_encoder: Any, tokenizer: Any) -> Any:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def _video_pipeline(text_encoder: Any, tokenizer: Any) -> Any:
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    unet = UNet3DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    return TextToVideoSDPipeline(
        vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_scheduler(),
    )


def make_tiny_pipeline(path: str | Path, kind: PipelineKind = "image", seed: int = 0) -> Path:
    """Build a tiny random pipeline of `kind` and save it (save_pretrained) under `path`.

    The same seed gives the same weights, so tests may compare pixels across processes.
    Returns the directory, ready for `DiffusionPipeline.from_pretrained`.
    """
    if kind not in ("image", "video"):
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    import torch

    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    text_encoder, tokenizer = _tiny_text_stack(target)
    build = _image_pipeline if kind == "image" else _video_pipeline
    pipeline = build(text_encoder, tokenizer)
    pipeline.save_pretrained(str(target))
    # the tokenizer sources were only needed to build the tokenizer
    for leftover in (target / "tokenizer-src").iterdir():
        leftover.unlink()
    (target / "tokenizer-src").rmdir()
    return target
