"""Bodies of OpenAI's Responses API (POST /v1/responses and the stored-response routes) as
msgspec Structs, so Litestar validates them and /schema publishes them.

Input items stay plain objects in the request: their kinds (messages with text and image
parts, function_call, function_call_output, reasoning) are checked where they become chat
messages (routes_responses), which names the item at fault."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from minisgl.sampling_params import door_struct

MetadataKey = Annotated[str, Meta(max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)]  # OpenAI's bounds


class TextFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = msgspec.field(default=None, name="schema")
    description: str | None = None
    strict: bool | None = None  # the grammar enforces the schema whatever it says


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat = msgspec.field(default_factory=lambda: TextFormat(type="text"))


class Reasoning(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Accepted and echoed; the thinking comes back as reasoning items when the server has a
    reasoning parser (--reasoning-parser)."""

    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(door_struct("ResponsesSampling", "responses",
                                   only=("max_new_tokens", "temperature", "top_p")), kw_only=True):
    input: Annotated[str | list[dict[str, Any]], Meta(description=(
        "a user message, or a list of items: messages ({role, content: a string or input_text / input_image / "
        "output_text parts}), function_call, function_call_output and reasoning items"))]
    model: str | None = None
    instructions: str | None = None  # a system message before the input (not carried to later responses)
    previous_response_id: str | None = None  # continue a stored response's conversation
    store: bool = True
    stream: bool = False
    metadata: Metadata | None = None
    tools: list[dict[str, Any]] | None = None  # function tools: {type: function, name, description, parameters}
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    user: str | None = None


# ---- the response object -----------------------------------------------------------------


class OutputText(msgspec.Struct, kw_only=True, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(msgspec.Struct, kw_only=True, tag_field="type", tag="message"):
    id: str
    content: list[OutputText]
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"


class FunctionCallItem(msgspec.Struct, kw_only=True, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"


class ReasoningText(msgspec.Struct, kw_only=True, tag_field="type", tag="reasoning_text"):
    text: str


class ReasoningItem(msgspec.Struct, kw_only=True, tag_field="type", tag="reasoning"):
    id: str
    content: list[ReasoningText]
    summary: list[Any] = []
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"


OutputItem = OutputMessage | FunctionCallItem | ReasoningItem


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int
    cache_write_tokens: int = 0  # the engine reports reads of its prefix cache, not writes


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class IncompleteDetails(msgspec.Struct, kw_only=True):
    reason: Literal["max_output_tokens"]


class ResponseObject(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    completed_at: int | None = None
    model: str
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    output: list[OutputItem]
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    text: TextConfig
    object: Literal["response"] = "response"
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = {}
    previous_response_id: str | None = None
    reasoning: Reasoning | None = None
    store: bool = True
    temperature: float | None = None
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None


class DeletedResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class InputItemList(msgspec.Struct, kw_only=True):
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"
