"""Prompts to token ids and token ids back to text, with the request layer's input rules.

`Tokenizer` wraps the model's transformers tokenizer. `encode_prompts` and `encode_chat`
are the rules every front door shares: what a prompt may be (text, token ids, a batch of
either), which chat roles exist, that token ids are inside the vocabulary, that nothing is
empty. They are plain functions of a Tokenizer so that tokenizer worker processes
(`--num-tokenizer`) run exactly the same code."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from .detokenizer import IncrementalDetokenizer
from .errors import ErrorKind, RequestError, invalid

log = logging.getLogger("minisgl.frontend")

# Used only when a model ships no chat template (base models); logged once at load.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_PROMPTS = 1024  # prompts in one batched request; each becomes at least one engine request


class Tokenizer:
    def __init__(self, model_path: str, trust_remote_code: bool = False, token_cache_size: int = 32) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.vocab_size = len(self.tokenizer)
        # the most characters one token can stand for: a text longer than context x this
        # cannot fit, which is known before paying for its tokenization
        self.max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        if not self.has_chat_template:
            log.warning("tokenizer of %s has no chat template; chat uses a plain ChatML template", model_path)
        # TOKEN_CACHE_SIZE: the decode cache of single tokens' text (logprobs name every token)
        self.token_text = functools.lru_cache(maxsize=token_cache_size or None)(self._token_text)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def render_chat(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, template_kwargs: dict[str, Any] | None = None) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message,
                chat_template=None if self.has_chat_template else FALLBACK_CHAT_TEMPLATE,
                **(template_kwargs or {}),
            )
        except Exception as exc:  # jinja errors (e.g. a template's raise_exception) are the request's fault
            raise invalid(f"chat template failed: {type(exc).__name__}: {exc}", param="messages") from None

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def detokenizer(self, *, skip_special_tokens: bool = True, stop: Sequence[str] = ()) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, skip_special_tokens=skip_special_tokens, stop=tuple(stop))


def check_token_ids(tokenizer: Tokenizer, ids: Sequence[Any], param: str) -> list[int]:
    vocab = tokenizer.vocab_size
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
            raise invalid(f"'{param}' holds token id {t!r}, outside this tokenizer's vocabulary [0, {vocab})", param)
    return list(ids)


def prompt_items(prompt: str | Sequence[Any]) -> list[Any]:
    """A prompt is a string, token ids, or a batch of either: the batch."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return [prompt]
    return list(prompt)


def check_length(tokenizer: Tokenizer, chars: int, max_context_len: int | None, param: str) -> None:
    """Refuse, before tokenizing it, a text too long to fit the context whatever its tokens
    (twice the bound, so normalizers that shorten text can never make it wrong)."""
    if max_context_len is None:
        return
    limit = 2 * max_context_len * tokenizer.max_token_chars
    if chars > limit:
        raise RequestError(ErrorKind.CONTEXT_LENGTH_EXCEEDED,
                           f"'{param}' has {chars} characters: more than can fit this model's maximum context length "
                           f"of {max_context_len} tokens (at most {limit} characters)", param)


def encode_prompts(tokenizer: Tokenizer, prompt: str | Sequence[Any], param: str = "prompt",
                   max_context_len: int | None = None) -> list[list[int]]:
    """One token-id list per prompt of the batch."""
    items = prompt_items(prompt)
    if not items:
        raise invalid(f"'{param}' is empty", param)
    if len(items) > MAX_PROMPTS:
        raise invalid(f"'{param}' holds {len(items)} prompts; at most {MAX_PROMPTS} per request", param)
    out = []
    for item in items:
        if isinstance(item, str):
            check_length(tokenizer, len(item), max_context_len, param)
            ids = tokenizer.encode(item)
        elif isinstance(item, Sequence):
            ids = check_token_ids(tokenizer, item, param)
        else:
            raise invalid(f"'{param}' must be a string, a list of strings, a list of token ids or a list of "
                          "token-id lists", param)
        if not ids:
            raise invalid(f"'{param}' is empty", param)
        out.append(ids)
    return out


def _content_text(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            raise invalid(f"messages[{index}] has an image_url part; this model takes text only", "messages")
        if kind != "text" or not isinstance(part.get("text"), str):
            raise invalid(f"messages[{index}].content parts must be {{'type': 'text', 'text': ...}}", "messages")
        parts.append(part["text"])
    return "".join(parts)


def chat_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages as the chat template takes them (content parts joined)."""
    if not messages:
        raise invalid("'messages' must hold at least one message", "messages")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise invalid(f"messages[{i}].role is {role!r}; expected one of {', '.join(sorted(CHAT_ROLES))}", "messages")
        if m.get("content") is None and role != "assistant":
            raise invalid(f"messages[{i}].content is missing", "messages")
        entry = {"role": role, "content": _content_text(m, i)}
        entry.update({k: m[k] for k in ("name", "reasoning_content", "tool_calls", "tool_call_id") if m.get(k)})
        out.append(entry)
    return out


def encode_chat(tokenizer: Tokenizer, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True,
                continue_final_message: bool = False, template_kwargs: dict[str, Any] | None = None,
                max_context_len: int | None = None) -> list[int]:
    conversation = chat_messages(messages)
    check_length(tokenizer, sum(len(m["content"]) for m in conversation), max_context_len, "messages")
    text = tokenizer.render_chat(conversation, add_generation_prompt=add_generation_prompt,
                                 continue_final_message=continue_final_message, template_kwargs=template_kwargs)
    # the template already wrote any BOS it wants
    ids = list(tokenizer.tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise invalid("the chat template rendered an empty prompt", "messages")
    return ids
