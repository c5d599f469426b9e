"""Shared by `minisgl generate` and `minisgl chat`: stream text from a running server
(--url) or from an engine started in this process (minisgl.LLM)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import click

from ..sampling_params import SamplingParams
from ..settings import Settings


def start_llm(settings: Settings) -> Any:
    """minisgl.LLM from an already-loaded Settings (only the values that differ from the
    defaults are passed, so the environment still fills the rest the same way)."""
    from ..llm import LLM
    from ..plugins import get_registry

    defaults = {spec.name: spec.default for spec in get_registry().settings()}
    overrides = {
        name: value
        for name, value in settings.values().items()
        if name not in ("model_path", "backend", "dtype", "model_local_dir") and value != defaults.get(name)
    }
    try:
        return LLM(model=settings.model_path, backend=settings.backend, dtype=settings.dtype, **overrides)
    except (ValueError, LookupError, RuntimeError) as exc:
        # an unknown model, an unavailable backend, a missing package: a message, not a traceback
        raise click.ClickException(str(exc)) from None


def stream_local(llm: Any, prompt: str | list[int], sampling: SamplingParams) -> Iterator[str]:
    for delta in llm.stream(prompt, sampling):
        if delta.text:
            yield delta.text


def _http_error(response: Any) -> click.ClickException:
    response.read()
    try:
        message = response.json()["error"]["message"]
    except Exception:
        message = response.text[:500]
    return click.ClickException(f"server answered {response.status_code}: {message}")


def stream_generate_url(url: str, prompt: str, sampling: dict[str, Any]) -> Iterator[str]:
    """POST /generate with the original mini-sglang's streaming format."""
    import httpx

    body = {"prompt": prompt, "stream": True, "sampling_params": sampling}
    try:
        with httpx.stream("POST", url.rstrip("/") + "/generate", json=body, timeout=None) as response:
            if response.status_code != 200:
                raise _http_error(response)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if "text_delta" in event:
                    yield event["text_delta"]
                elif event.get("event") == "error":
                    raise click.ClickException(event.get("error", {}).get("message", "server error"))
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None


def stream_chat_url(url: str, messages: list[dict[str, str]], body: dict[str, Any]) -> Iterator[str]:
    """POST /v1/chat/completions with stream=true (SSE)."""
    import httpx

    payload = {**body, "messages": messages, "stream": True}
    try:
        with httpx.stream("POST", url.rstrip("/") + "/v1/chat/completions", json=payload, timeout=None) as response:
            if response.status_code != 200:
                raise _http_error(response)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise click.ClickException(event["error"].get("message", "server error"))
                for choice in event.get("choices", []):
                    text = choice.get("delta", {}).get("content")
                    if text:
                        yield text
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
