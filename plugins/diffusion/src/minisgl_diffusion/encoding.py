"""Turning generated pictures into bytes for a response: PNG (Pillow only) and MP4
(imageio with its ffmpeg plugin, and numpy)."""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from .errors import DiffusionUnavailable

MP4_PACKAGES = {"imageio": "imageio", "numpy": "numpy", "imageio_ffmpeg": "imageio-ffmpeg"}


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64_png(image: Any) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def require_mp4() -> None:
    missing = [pkg for module, pkg in MP4_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise DiffusionUnavailable(
            f"response_format b64_mp4 needs {', '.join(missing)}: pip install 'minisgl-diffusion[video]' "
            "(or ask for response_format frames_b64_png, which needs only Pillow)",
            param="response_format",
        )


def mp4_bytes(frames: Sequence[Any], fps: int) -> bytes:
    """H.264 in MP4 (yuv420p, so browsers play it); sides are padded up to a multiple of 16."""
    require_mp4()
    import imageio.v2 as imageio
    import numpy as np

    handle, path = tempfile.mkstemp(suffix=".mp4")
    os.close(handle)
    try:
        arrays = [np.asarray(frame.convert("RGB")) for frame in frames]
        imageio.mimwrite(path, arrays, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=16)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


def b64_mp4(frames: Sequence[Any], fps: int) -> str:
    return base64.b64encode(mp4_bytes(frames, fps)).decode("ascii")
