"""Can backend-sgl run here? It serves on a CUDA device with Triton; `--device cpu` runs the
same model code on the torch reference kernels (for tests and tensor-parallel checks)."""

import importlib.util


def probe(settings=None) -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "needs torch with CUDA: pip install torch"
    import torch

    device = getattr(settings, "device", "auto") if settings is not None else "auto"
    if device == "cpu":
        return None
    if device not in ("auto", "cuda"):
        return f"runs on CUDA (or, for checks, on --device cpu), and --device is {device}"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU: torch.cuda.is_available() is False (--device cpu runs it on the torch reference kernels)"
    if importlib.util.find_spec("triton") is None:
        return "needs Triton: pip install triton"
    return None
