"""Request and response bodies of Anthropic's Messages API (POST /v1/messages), as msgspec
Structs: Litestar validates them and publishes them at /schema. Unknown fields (such as
`cache_control`) are accepted and ignored, as Anthropic's clients send fields we do not use."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class TextBlock(msgspec.Struct, kw_only=True, tag_field="type", tag="text"):
    text: str


class Base64Source(msgspec.Struct, kw_only=True, tag_field="type", tag="base64"):
    media_type: str
    data: str


class URLSource(msgspec.Struct, kw_only=True, tag_field="type", tag="url"):
    url: str


class ImageBlock(msgspec.Struct, kw_only=True, tag_field="type", tag="image"):
    source: Base64Source | URLSource


class ToolUseBlock(msgspec.Struct, kw_only=True, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(msgspec.Struct, kw_only=True, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None


class ThinkingBlock(msgspec.Struct, kw_only=True, tag_field="type", tag="thinking"):
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, kw_only=True, tag_field="type", tag="redacted_thinking"):
    data: str


InputBlock = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock


class InputMessage(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | list[InputBlock]


class ToolDefinition(msgspec.Struct, kw_only=True):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None  # a JSON schema; the grammar enforces it where calls are forced
    type: str | None = None  # "custom" (or absent): a client tool; Anthropic's server tools are not served


class ToolChoiceAuto(msgspec.Struct, kw_only=True, tag_field="type", tag="auto"):
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(msgspec.Struct, kw_only=True, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(msgspec.Struct, kw_only=True, tag_field="type", tag="tool"):
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(msgspec.Struct, kw_only=True, tag_field="type", tag="none"):
    pass


class ThinkingEnabled(msgspec.Struct, kw_only=True, tag_field="type", tag="enabled"):
    budget_tokens: int | None = None  # accepted; the thinking ends where the model ends it, within max_tokens


class ThinkingDisabled(msgspec.Struct, kw_only=True, tag_field="type", tag="disabled"):
    pass


class Metadata(msgspec.Struct, kw_only=True):
    user_id: str | None = None


class MessagesRequest(msgspec.Struct, kw_only=True):
    model: str
    max_tokens: int  # required, as in Anthropic's API
    messages: list[InputMessage]
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: Metadata | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone | None = None
    thinking: ThinkingEnabled | ThinkingDisabled | None = None


# ---- responses -------------------------------------------------------------------------


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int  # the prompt's tokens not read from the prefix cache
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class MessageResponse(msgspec.Struct, kw_only=True):
    id: str
    model: str
    content: list[TextBlock | ToolUseBlock | ThinkingBlock]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None
    usage: Usage
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"


class AnthropicErrorInfo(msgspec.Struct, kw_only=True):
    type: str
    message: str


class AnthropicError(msgspec.Struct, kw_only=True):
    error: AnthropicErrorInfo
    type: Literal["error"] = "error"
