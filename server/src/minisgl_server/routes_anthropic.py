"""POST /v1/messages, Anthropic's Messages API: translations between Anthropic's JSON and
the chat request layer (routes_openai.start_chat), nothing more.

Anthropic's content blocks become OpenAI chat messages (images as image_url parts, an
assistant's tool_use blocks as its tool_calls, tool_result blocks as tool messages), its
tools and tool_choice OpenAI's; the answer's deltas become content blocks (thinking from
the reasoning parser, text, tool_use) through one assembler, which also writes the
stream's events, so a streamed message is the non-streamed one. Errors have Anthropic's
shape, `{"type": "error", "error": {"type", "message"}}`, with the status of errors.py's
one table."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.openapi import ResponseSpec
from litestar.response import Stream

from minisgl.frontend.errors import invalid
from minisgl.frontend.generation import Delta, Generation, Sample
from minisgl.sampling_params import SamplingParams

from . import inflight
from .anthropic_types import (
    AnthropicError,
    AnthropicErrorInfo,
    Base64Source,
    ImageBlock,
    MessageResponse,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
)
from .errors import EXCEPTION_HANDLERS, error_body
from .openapi_docs import DESCRIPTIONS, GENERATION
from .routes_openai import start_chat
from .streaming import SSE_HEADERS, ClientDisconnected, new_request_id, until_disconnect

# an error status's Anthropic error type
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 415: "invalid_request_error",
               429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "abort": "end_turn"}
_encoder = msgspec.json.Encoder()


def anthropic_error(request: Request[Any, Any, Any], exc: Exception) -> Response[AnthropicError]:
    """The server's answer to `exc` (errors.py decides its status and message), in Anthropic's shape."""
    handler = next(h for kind, h in EXCEPTION_HANDLERS.items() if isinstance(exc, kind))
    answer = handler(request, exc)  # type: ignore[operator]
    return Response(_error(answer.status_code, answer.content.error.message), status_code=answer.status_code,
                    headers=dict(answer.headers), media_type="application/json")


def _error(status: int, message: str) -> AnthropicError:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return AnthropicError(error=AnthropicErrorInfo(type=kind, message=message))


# ---- Anthropic's request as chat messages -------------------------------------------------


def _image_url(block: ImageBlock) -> dict[str, Any]:
    src = block.source
    url = f"data:{src.media_type};base64,{src.data}" if isinstance(src, Base64Source) else src.url
    return {"type": "image_url", "image_url": {"url": url}}


def _chat_messages(data: MessagesRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if data.system:
        system = data.system if isinstance(data.system, str) else "".join(b.text for b in data.system)
        out.append({"role": "system", "content": system})
    for i, m in enumerate(data.messages):
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        parts: list[dict[str, Any]] = []
        message: dict[str, Any] = {"role": m.role}
        for j, block in enumerate(m.content):
            if isinstance(block, TextBlock):
                parts.append({"type": "text", "text": block.text})
            elif isinstance(block, ImageBlock):
                parts.append(_image_url(block))
            elif isinstance(block, ToolUseBlock) and m.role == "assistant":
                message.setdefault("tool_calls", []).append(
                    {"id": block.id, "type": "function",
                     "function": {"name": block.name, "arguments": json.dumps(block.input)}})
            elif isinstance(block, ToolResultBlock) and m.role == "user":  # answers the last turn's calls
                text = block.content if isinstance(block.content, str) else "".join(b.text for b in block.content or [])
                out.append({"role": "tool", "tool_call_id": block.tool_use_id,
                            "content": f"Error: {text}" if block.is_error else text})
            elif isinstance(block, ThinkingBlock) and m.role == "assistant":
                message["reasoning_content"] = message.get("reasoning_content", "") + block.thinking
            elif not (isinstance(block, RedactedThinkingBlock) and m.role == "assistant"):
                raise invalid(f"messages[{i}].content[{j}]: a {block.__struct_config__.tag!r} block may not be in "
                              f"a {m.role} message", "messages")
        if parts or len(message) > 1 or not m.content:
            out.append(message | {"content": parts or (None if m.role == "assistant" else "")})
    return out


def _tools(data: MessagesRequest) -> tuple[list[dict[str, Any]] | None, Any, bool]:
    """OpenAI's tools, tool_choice and parallel_tool_calls of the request's."""
    tools = None
    if data.tools is not None:
        tools = []
        for i, tool in enumerate(data.tools):
            if tool.type not in (None, "custom"):
                raise invalid(f"tools[{i}] is a {tool.type!r} server tool; only client tools (with an "
                              "input_schema) are served", "tools")
            if tool.input_schema is None:
                raise invalid(f"tools[{i}].input_schema is missing", "tools")
            fn = {"name": tool.name, "parameters": tool.input_schema}
            tools.append({"type": "function", "function": fn | ({"description": tool.description}
                                                                 if tool.description else {})})
    choice = data.tool_choice
    if choice is None:
        return tools, None, True
    parallel = not getattr(choice, "disable_parallel_tool_use", False)
    if isinstance(choice, ToolChoiceAuto):
        return tools, "auto", parallel
    if isinstance(choice, ToolChoiceAny):
        return tools, "required", parallel
    if isinstance(choice, ToolChoiceTool):
        return tools, {"type": "function", "function": {"name": choice.name}}, False
    return tools, "none", True


def _sampling(data: MessagesRequest) -> tuple[SamplingParams, dict[str, str]]:
    given = {"max_new_tokens": data.max_tokens, "temperature": data.temperature, "top_p": data.top_p,
             "top_k": data.top_k, "stop": data.stop_sequences}
    names = {"max_new_tokens": "max_tokens", "stop": "stop_sequences", "prompt": "messages"}
    return SamplingParams(**{k: v for k, v in given.items() if v is not None}), names


# ---- the answer as content blocks and stream events ---------------------------------------


class Blocks:
    """One answer's content blocks, built from its deltas: each delta's events (what the
    stream sends), and at the end the blocks of the whole message."""

    def __init__(self) -> None:
        self.content: list[Any] = []
        self.open: str | None = None  # the kind of the last block while it is open
        self.call: int | None = None  # the answer's call index of an open tool_use block
        self.arguments = ""

    def _start(self, block: Any, kind: str) -> bytes:
        out = self.stop()
        self.content.append(block)
        self.open = kind
        return out + _event("content_block_start", index=len(self.content) - 1, content_block=block)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", index=len(self.content) - 1, delta=delta)

    def stop(self) -> bytes:
        """Close the open block (a tool_use block's input is its arguments' JSON)."""
        if self.open is None:
            return b""
        if self.open == "tool_use":
            self.content[-1] = msgspec.structs.replace(self.content[-1], input=_input(self.arguments))
        self.open = None
        return _event("content_block_stop", index=len(self.content) - 1)

    def push(self, d: Delta) -> bytes:
        out = b""
        if d.reasoning:
            if self.open != "thinking":
                out += self._start(ThinkingBlock(thinking=""), "thinking")
            self.content[-1].thinking += d.reasoning
            out += self._delta({"type": "thinking_delta", "thinking": d.reasoning})
        if d.text:
            if self.open != "text":
                out += self._start(TextBlock(text=""), "text")
            self.content[-1].text += d.text
            out += self._delta({"type": "text_delta", "text": d.text})
        for call in d.tool_calls:
            if call.name is not None or self.open != "tool_use" or self.call != call.index:
                out += self._start(ToolUseBlock(id=call.id or "", name=call.name or "", input={}), "tool_use")
                self.call, self.arguments = call.index, ""
            if call.arguments:
                self.arguments += call.arguments
                out += self._delta({"type": "input_json_delta", "partial_json": call.arguments})
        return out


def _input(arguments: str) -> dict[str, Any]:
    """A call's input: its arguments' JSON object ({} when they are none, or not one)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _event(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode({"type": kind, **fields}) + b"\n\n"


def _stop(sample: Sample) -> tuple[str | None, str | None]:
    """Anthropic's stop_reason and stop_sequence of a finished answer."""
    if sample.finish_reason == "stop" and sample.stop_string is not None:
        return "stop_sequence", sample.stop_string
    return STOP_REASONS.get(sample.finish_reason or "", "end_turn"), None


def _usage(gen: Generation) -> Usage:
    return Usage(input_tokens=gen.prompt_tokens - gen.cached_tokens, output_tokens=gen.completion_tokens,
                 cache_read_input_tokens=gen.cached_tokens)


def _message(gen: Generation, model: str, blocks: Blocks) -> MessageResponse:
    reason, sequence = _stop(gen.samples[0])
    return MessageResponse(id=gen.rid, model=model, content=blocks.content, stop_reason=reason,
                           stop_sequence=sequence, usage=_usage(gen))


async def _events(state: Any, gen: Generation, model: str) -> AsyncIterator[bytes]:
    blocks = Blocks()
    start = MessageResponse(id=gen.rid, model=model, content=[], stop_reason=None, stop_sequence=None,
                            usage=Usage(input_tokens=gen.prompt_tokens, output_tokens=0))
    yield _event("message_start", message=start)
    try:
        async for d in inflight.deltas(state, gen):
            yield blocks.push(d)
        yield blocks.stop()
        reason, sequence = _stop(gen.samples[0])
        usage = _usage(gen)
        yield _event("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence}, usage=usage)
        yield _event("message_stop")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # after the 200 went out: Anthropic's error event
        status, body, _ = error_body(exc)
        yield _event("error", error=_error(status, body.error.message).error)


@post("/v1/messages", status_code=200, summary="Anthropic messages", exception_handlers=dict.fromkeys(EXCEPTION_HANDLERS, anthropic_error),
      responses={s: ResponseSpec(data_container=AnthropicError, generate_examples=False, description=DESCRIPTIONS[s])
                 for s in GENERATION})
async def messages(request: Request[Any, Any, Any], data: MessagesRequest) -> Response[Any]:
    state = request.app.state.server
    tools, tool_choice, parallel = _tools(data)
    template = {}
    if data.thinking is not None:  # a model whose template can switch its thinking (Qwen3's) follows it
        template = {"enable_thinking": isinstance(data.thinking, ThinkingEnabled)}
    served, gen = await start_chat(state, new_request_id("msg"), data.model, _chat_messages(data),
                                   lambda: _sampling(data), tools=tools, tool_choice=tool_choice,
                                   parallel_tool_calls=parallel, template_kwargs=template or None)
    if data.stream:
        return Stream(_events(state, gen, served.model_id), media_type="text/event-stream", headers=SSE_HEADERS,
                      background=inflight.release_after(state, gen))
    blocks = Blocks()

    async def collect() -> None:
        async for d in inflight.deltas(state, gen):
            blocks.push(d)
        blocks.stop()

    try:
        await until_disconnect(request, collect())
    except ClientDisconnected:
        return Response(b"", status_code=499)
    return Response(_message(gen, served.model_id, blocks))
