"""minisgl: a small sglang-style serving engine built as a plugin registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "RequestOutput", "SamplingParams", "__version__"]

if TYPE_CHECKING:
    from .llm import LLM, RequestOutput


def __getattr__(name: str) -> Any:
    # The offline API pulls torch; keep `import minisgl` (and plugin listing) light.
    if name in ("LLM", "RequestOutput"):
        from . import llm

        return getattr(llm, name)
    raise AttributeError(name)
