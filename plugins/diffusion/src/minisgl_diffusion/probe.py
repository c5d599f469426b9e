"""Can the diffusion runners run here? They need diffusers (and torch)."""

import importlib.util


def probe(settings=None) -> str | None:
    for module in ("torch", "diffusers"):
        if importlib.util.find_spec(module) is None:
            return f"needs {module}: pip install minisgl-diffusion[{module}] or pip install {module}"
    for module in ("minisgl_diffusion.image", "minisgl_diffusion.video"):
        if importlib.util.find_spec(module) is None:
            return "the diffusers runners are not part of this release yet"
    return None
