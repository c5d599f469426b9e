"""Can backend-hf run here? It needs torch and transformers, nothing else."""

import importlib.util


def probe(settings=None) -> str | None:
    for module, package in (("torch", "torch"), ("transformers", "transformers")):
        if importlib.util.find_spec(module) is None:
            return f"needs {package}: pip install {package}"
    return None
