"""Can the diffusion runners run here? They need torch, diffusers and Pillow."""

from __future__ import annotations

import importlib.util
from typing import Any

REQUIRED = {"torch": "torch", "diffusers": "diffusers", "PIL": "Pillow"}


def probe(settings: Any = None) -> str | None:
    for module, package in REQUIRED.items():
        if importlib.util.find_spec(module) is None:
            return f"needs {package}: pip install minisgl-diffusion (or pip install {package})"
    return None
