"""Can backend-mlx run here? It needs mlx and mlx-lm; auto picks it only on Apple silicon."""

import importlib.util
import platform

INSTALL_HINT = "backend-mlx needs mlx and mlx-lm: pip install mlx mlx-lm (Linux: pip install 'mlx[cpu]' mlx-lm)"


def probe(settings=None) -> str | None:
    if importlib.util.find_spec("mlx") is None:
        return "needs mlx: pip install mlx mlx-lm (Linux: pip install 'mlx[cpu]' mlx-lm)"
    if importlib.util.find_spec("mlx_lm") is None:
        return "needs mlx-lm: pip install mlx-lm"
    if settings is not None and getattr(settings, "backend", "auto") == "auto":
        if not (platform.system() == "Darwin" and platform.machine() == "arm64"):
            return "auto picks mlx only on Apple silicon; ask for --backend mlx to use mlx-cpu"
    # asked for (or on Apple silicon): the mlx package must come with a compute backend;
    # on Linux plain `mlx` has none, `mlx[cpu]` (or `mlx[cuda]`) brings it
    try:
        import mlx.core  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mlx is installed but does not load ({exc}); on Linux: pip install 'mlx[cpu]'"
    return None
