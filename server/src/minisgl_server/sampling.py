"""From API fields to the engine's SamplingParams, with 400s that name the API's field."""

from __future__ import annotations

import re
from typing import Any

from minisgl.sampling_params import SamplingParams

from .errors import bad_request

# SamplingParams field -> the name clients of the OpenAI endpoints know it by
API_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
_FIELD = re.compile(r"sampling parameter '(\w+)'")


def as_stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def make_sampling(api_names: dict[str, str] | None = None, **fields: Any) -> SamplingParams:
    """Build and validate; None values keep SamplingParams' defaults."""
    values = {k: v for k, v in fields.items() if v is not None}
    if values.get("top_k") == -1:
        values["top_k"] = 0
    try:
        return SamplingParams(**values).validate()
    except ValueError as exc:
        match = _FIELD.search(str(exc))
        field = match.group(1) if match else None
        names = api_names if api_names is not None else API_NAMES
        param = names.get(field, field) if field else None
        message = str(exc)
        if field and param != field:
            message = message.replace(f"'{field}'", f"'{param}'")
        raise bad_request(message, param=param) from None


def fit_context(sampling: SamplingParams, prompt_len: int, max_context_len: int, default_max_new: int, param: str = "max_tokens") -> SamplingParams:
    """Reject prompts that cannot fit the context; fill in max_new_tokens when unset."""
    if prompt_len == 0:
        raise bad_request("the prompt is empty (0 tokens)", param="prompt")
    if prompt_len >= max_context_len:
        raise bad_request(
            f"the prompt has {prompt_len} tokens; this model's maximum context length is {max_context_len} tokens",
            param="prompt",
        )
    room = max_context_len - prompt_len
    if sampling.max_new_tokens is None:
        sampling.max_new_tokens = min(default_max_new, room)
    elif sampling.max_new_tokens > room:
        raise bad_request(
            f"this model's maximum context length is {max_context_len} tokens; you requested "
            f"{prompt_len + sampling.max_new_tokens} tokens ({prompt_len} in the prompt, "
            f"{sampling.max_new_tokens} for the completion); reduce the prompt or {param}",
            param=param,
        )
    if sampling.min_new_tokens > sampling.max_new_tokens:
        raise bad_request(f"min_tokens ({sampling.min_new_tokens}) exceeds {param} ({sampling.max_new_tokens})", param="min_tokens")
    return sampling


def derive_seed(seed: int | None, index: int) -> int | None:
    """Choice i of a seeded request with n > 1 gets seed + i: distinct, reproducible."""
    return None if seed is None else seed + index
