"""Turning the prompt fields of a request into token ids (with 400s naming the field)."""

from __future__ import annotations

from typing import Any

from .errors import APIError, bad_request
from .openai_types import ChatMessage, ImagePart, TextPart

CHAT_ROLES = {"system", "developer", "user", "assistant", "tool"}


def ready_state(request: Any) -> Any:
    state = request.app.state.server
    if not state.ready or not state.pool.healthy:
        raise APIError(503, state.health()[1].get("reason", "not ready"), code="not_ready", headers={"Retry-After": "1"})
    return state


def check_model(state: Any, model: str | None) -> None:
    if not state.accepts_model(model):
        raise APIError(404, f"the model `{model}` does not exist; this server serves `{state.model_id}` (GET /v1/models)",
                       param="model", code="model_not_found")


def check_token_ids(state: Any, ids: list[int], param: str) -> list[int]:
    vocab = len(state.tokenizer.tokenizer)
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool) or t < 0 or t >= vocab:
            raise bad_request(f"'{param}' holds token id {t!r}, outside this tokenizer's vocabulary [0, {vocab})", param=param)
    return ids


def completion_prompts(state: Any, prompt: str | list[Any]) -> list[list[int]]:
    """OpenAI's prompt: a string, a list of strings, a list of token ids, or a list of lists."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [prompt]
    else:
        items = list(prompt)
    if not items:
        raise bad_request("'prompt' is empty", param="prompt")
    out = []
    for item in items:
        if isinstance(item, str):
            ids = state.tokenizer.encode(item)
        elif isinstance(item, list):
            ids = check_token_ids(state, item, "prompt")
        else:
            raise bad_request("'prompt' must be a string, a list of strings, a list of token ids or a list of token-id lists", param="prompt")
        if not ids:
            raise bad_request("'prompt' is empty", param="prompt")
        out.append(ids)
    return out


def _content_text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, ImagePart):
            raise bad_request(f"messages[{index}] has an image_url part; this model takes text only", param="messages")
        if isinstance(part, TextPart):
            parts.append(part.text)
    return "".join(parts)


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    if not messages:
        raise bad_request("'messages' must hold at least one message", param="messages")
    out = []
    for i, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            raise bad_request(f"messages[{i}].role is {m.role!r}; expected one of {', '.join(sorted(CHAT_ROLES))}", param="messages")
        if m.content is None and m.role != "assistant":
            raise bad_request(f"messages[{i}].content is missing", param="messages")
        entry: dict[str, Any] = {"role": m.role, "content": _content_text(m, i)}
        if m.name:
            entry["name"] = m.name
        if m.reasoning_content:
            entry["reasoning_content"] = m.reasoning_content
        out.append(entry)
    return out
