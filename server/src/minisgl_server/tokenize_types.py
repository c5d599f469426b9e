"""Bodies of POST /tokenize, POST /detokenize and GET /version, in vLLM's shapes."""

from __future__ import annotations

from typing import Any

import msgspec

from .openai_types import ChatMessage


class TokenizeRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    prompt: str | None = None  # exactly one of prompt and messages
    messages: list[ChatMessage] | None = None
    # prompt: the tokenizer's special tokens (BOS) added, as a completion gets them;
    # messages: the chat template writes its own, as a chat completion gets them
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False


class TokenizeResponse(msgspec.Struct, kw_only=True):
    tokens: list[int]
    count: int
    max_model_len: int
    token_strs: list[str] | None = None


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    tokens: list[int]
    model: str | None = None


class DetokenizeResponse(msgspec.Struct, kw_only=True):
    prompt: str


class VersionResponse(msgspec.Struct, kw_only=True):
    version: str
