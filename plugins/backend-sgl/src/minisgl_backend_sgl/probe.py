"""Can backend-sgl run here? It needs a CUDA device, torch with CUDA, and Triton."""

import importlib.util


def probe(settings=None) -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "needs torch with CUDA: pip install torch"
    import torch

    if settings is not None and getattr(settings, "device", "auto") not in ("auto", "cuda"):
        return f"runs on CUDA only, and --device is {settings.device}"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU: torch.cuda.is_available() is False"
    if importlib.util.find_spec("triton") is None:
        return "needs Triton: pip install triton"
    return None
