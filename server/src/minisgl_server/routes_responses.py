"""POST /v1/responses (OpenAI's Responses API, stream and non-stream) and the stored
responses (GET and DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items):
translations between the Responses shapes and the request layer's chat (minisgl.frontend),
and the store (responses_store).

A request's conversation is its items: those of the response `previous_response_id` names
(its input and its output), then its own input. They become chat messages: messages as
they are, function_call items the assistant's tool_calls, function_call_output items tool
messages, reasoning items the assistant's reasoning_content; `instructions` is a system
message before them. One `_Output` folds the answer's deltas into output items in the order
they open, for the stream's events and the response object alike, so a stream assembles to
the object the same request answers without one."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import Parameter
from litestar.response import Stream

from minisgl.frontend.errors import ErrorKind, RequestError, invalid
from minisgl.frontend.generation import Delta, Generation, Sample
from minisgl.frontend.tokenizer import encode_chat, has_image_parts
from minisgl.grammar import GrammarError, response_format_schema
from minisgl.sampling_params import door_params

from . import inflight
from .http_edges import api_key_owner
from .openai_types import JSONSchemaFormat, ResponseFormat
from .responses_types import (
    DeletedResponse,
    FunctionCallItem,
    IncompleteDetails,
    InputItemList,
    InputTokensDetails,
    OutputItem,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ReasoningItem,
    ReasoningText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
)
from .streaming import SSE_HEADERS, ClientDisconnected, error_payload, until_disconnect

ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
MESSAGE_ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text", "text", "refusal")
# a failed response's error code, by the request layer's error kind
FAILURE_CODES = {ErrorKind.CAPACITY: "rate_limit_exceeded", ErrorKind.INVALID_REQUEST: "invalid_prompt",
                 ErrorKind.CONTEXT_LENGTH_EXCEEDED: "invalid_prompt"}
_json = msgspec.json.Encoder()


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ---- input items -> chat messages ----------------------------------------------------------


def _text(content: Any, where: str) -> str:
    """A string, or text parts joined (a function_call_output's output may be either)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") in TEXT_PARTS
                                         and isinstance(p.get("text", p.get("refusal")), str) for p in content):
        return "".join(p.get("text", p.get("refusal")) for p in content)
    raise invalid(f"{where} must be a string or a list of {{'type': 'input_text', 'text': ...}} parts", "input")


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """A message's content as Responses parts (a string is one input_text part)."""
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"{where} must be a string or a list of content parts", "input")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS:
            _text([part], f"{where}[{j}]")
        elif kind == "input_image":
            if not isinstance(part.get("image_url"), str) or not part["image_url"]:
                raise invalid(f"{where}[{j}] needs 'image_url' (file_id is not supported here)", "input")
        else:
            raise invalid(f"{where}[{j}].type is {kind!r}; expected one of {', '.join(TEXT_PARTS)}, input_image",
                          "input")
    return content


def input_items(given: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as checked items, each with an id (as GET .../input_items lists them)."""
    if isinstance(given, str):
        given = [{"type": "message", "role": "user", "content": given}]
    if not given:
        raise invalid("'input' must hold at least one item", "input")
    items = []
    for i, raw in enumerate(given):
        kind = raw.get("type", "message" if "role" in raw else None)
        where = f"input[{i}]"
        if raw.get("id") is not None and not isinstance(raw["id"], str):
            raise invalid(f"{where}.id must be a string", "input")
        if kind == "message":
            role = raw.get("role")
            if role not in MESSAGE_ROLES:
                raise invalid(f"{where}.role is {role!r}; expected one of {', '.join(MESSAGE_ROLES)}", "input")
            item = {"id": raw.get("id") or _new_id("msg"), "type": "message", "role": role,
                    "content": _parts(raw.get("content"), f"{where}.content")}
        elif kind == "function_call":
            fields = {k: raw.get(k) for k in ("call_id", "name", "arguments")}
            if not all(isinstance(v, str) and v for v in fields.values()):
                raise invalid(f"{where} (function_call) needs 'call_id', 'name' and 'arguments' strings", "input")
            item = {"id": raw.get("id") or _new_id("fc"), "type": kind, **fields, "status": "completed"}
        elif kind == "function_call_output":
            if not isinstance(raw.get("call_id"), str) or not raw["call_id"]:
                raise invalid(f"{where} (function_call_output) needs 'call_id'", "input")
            item = {"id": raw.get("id") or _new_id("fco"), "type": kind, "call_id": raw["call_id"],
                    "output": _text(raw.get("output"), f"{where}.output"), "status": "completed"}
        elif kind == "reasoning":
            parts = [raw.get("content") or [], raw.get("summary") or []]
            if not all(isinstance(ps, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in ps)
                       for ps in parts):
                raise invalid(f"{where} (reasoning): 'content' and 'summary' must be lists of {{'text': ...}} parts",
                              "input")
            texts = [p["text"] for ps in parts for p in ps]
            item = {"id": raw.get("id") or _new_id("rs"), "type": kind, "summary": [],
                    "content": [{"type": "reasoning_text", "text": "".join(texts)}]}
        else:
            raise invalid(f"{where}.type is {kind!r}; expected one of {', '.join(ITEM_TYPES)}", "input")
        items.append(item)
    return items


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p["type"] != "input_image" for p in parts):
        return "".join(p.get("text", p.get("refusal", "")) for p in parts)
    return [{"type": "image_url", "image_url": {"url": p["image_url"], "detail": p.get("detail") or "auto"}}
            if p["type"] == "input_image" else {"type": "text", "text": p.get("text", p.get("refusal", ""))}
            for p in parts]


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """The conversation of checked items as OpenAI chat messages."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    reasoning = ""  # a reasoning item's text, for the assistant turn that follows it

    def assistant() -> dict[str, Any]:
        nonlocal reasoning
        last = messages[-1] if messages else None
        if last is None or last["role"] != "assistant" or reasoning:
            last = {"role": "assistant", "content": None}
            if reasoning:
                last["reasoning_content"], reasoning = reasoning, ""
            messages.append(last)
        return last

    for item in items:
        if item["type"] == "message" and item["role"] == "assistant":
            turn = assistant()
            if turn.get("tool_calls") or turn["content"] is not None:  # a new turn after calls or text
                messages.append(turn := {"role": "assistant", "content": None})
            turn["content"] = _chat_content(item["content"])
        elif item["type"] == "message":
            messages.append({"role": item["role"], "content": _chat_content(item["content"])})
        elif item["type"] == "function_call":
            turn = assistant()
            turn.setdefault("tool_calls", []).append(
                {"id": item["call_id"], "type": "function",
                 "function": {"name": item["name"], "arguments": item["arguments"]}})
        elif item["type"] == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
        else:
            reasoning += item["content"][0]["text"]
    return messages


def _output_as_items(output: list[OutputItem]) -> list[dict[str, Any]]:
    """A stored response's output items as input items of the conversation that goes on."""
    return [msgspec.to_builtins(item) for item in output]


# ---- tools and text.format -> the request layer's --------------------------------------------


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses function tools ({type, name, description, parameters}) as chat tools."""
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise invalid(f"tools[{i}].type is {tool.get('type')!r}; this server runs function tools only", "tools")
        out.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if not isinstance(choice, dict):
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise invalid("'tool_choice' must be none, auto, required or {'type': 'function', 'name': ...}",
                      "tool_choice")
    return {"type": "function", "function": {"name": choice["name"]}}


def format_schema(text: TextConfig | None) -> str | None:
    """text.format as the JSON schema of the answer (json_object: any object), or None."""
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    spec = JSONSchemaFormat(name=fmt.name or "response", schema_=fmt.schema_) if fmt.type == "json_schema" else None
    try:
        return response_format_schema(ResponseFormat(type=fmt.type, json_schema=spec))
    except GrammarError as exc:
        raise invalid(f"'text.format': {exc}", "text") from None


# ---- the answer, as output items -------------------------------------------------------------


class _Output:
    """The answer's output items, built from its deltas in the order they open; `take` and
    `close` return the stream events each step adds (without sequence numbers)."""

    def __init__(self) -> None:
        self.items: list[OutputItem] = []
        self._reasoning: ReasoningItem | None = None
        self._message: OutputMessage | None = None
        self._calls: dict[int, FunctionCallItem] = {}

    def _open(self, item: OutputItem, part: Any = None) -> list[dict[str, Any]]:
        self.items.append(item)
        index = len(self.items) - 1
        events = [{"type": "response.output_item.added", "output_index": index, "item": _copy(item)}]
        if part is not None:
            item.content.append(part)  # type: ignore[union-attr]
            events.append({"type": "response.content_part.added", "item_id": item.id, "output_index": index,
                           "content_index": 0, "part": _copy(part)})
        return events

    def _done(self, item: OutputItem, status: str) -> list[dict[str, Any]]:
        index = self.items.index(item)
        where = {"item_id": item.id, "output_index": index}
        events = []
        if isinstance(item, (OutputMessage, ReasoningItem)):
            part = item.content[0]
            kind = "output_text" if isinstance(item, OutputMessage) else "reasoning_text"
            extra = {"logprobs": []} if isinstance(item, OutputMessage) else {}
            events += [{"type": f"response.{kind}.done", **where, "content_index": 0, "text": part.text, **extra},
                       {"type": "response.content_part.done", **where, "content_index": 0, "part": _copy(part)}]
        else:
            events.append({"type": "response.function_call_arguments.done", **where, "name": item.name,
                           "arguments": item.arguments})
        item.status = status  # type: ignore[assignment]
        return [*events, {"type": "response.output_item.done", "output_index": index, "item": _copy(item)}]

    def take(self, d: Delta) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if d.reasoning:
            if self._reasoning is None:
                self._reasoning = ReasoningItem(id=_new_id("rs"), content=[])
                events += self._open(self._reasoning, ReasoningText(text=""))
            self._reasoning.content[0].text += d.reasoning
            events.append({"type": "response.reasoning_text.delta", "item_id": self._reasoning.id,
                           "output_index": self.items.index(self._reasoning), "content_index": 0,
                           "delta": d.reasoning})
        if (d.text or d.tool_calls) and self._reasoning is not None and self._reasoning.status == "in_progress":
            events += self._done(self._reasoning, "completed")  # the thinking is over once the answer starts
        if d.text:
            if self._message is None:
                self._message = OutputMessage(id=_new_id("msg"), content=[])
                events += self._open(self._message, OutputText(text=""))
            self._message.content[0].text += d.text
            events.append({"type": "response.output_text.delta", "item_id": self._message.id,
                           "output_index": self.items.index(self._message), "content_index": 0,
                           "delta": d.text, "logprobs": []})
        for c in d.tool_calls:
            if c.name is not None:
                self._calls[c.index] = FunctionCallItem(id=_new_id("fc"), call_id=c.id or "", name=c.name, arguments="")
                events += self._open(self._calls[c.index])
            call = self._calls[c.index]
            if c.arguments:
                call.arguments += c.arguments
                events.append({"type": "response.function_call_arguments.delta", "item_id": call.id,
                               "output_index": self.items.index(call), "delta": c.arguments})
        return events

    def close(self, finish_reason: str | None) -> list[dict[str, Any]]:
        status = "incomplete" if finish_reason == "length" else "completed"
        return [e for item in self.items if item.status == "in_progress" for e in self._done(item, status)]


def _copy(struct: Any) -> Any:
    """A snapshot of an item or part as it is now (events go out before it grows)."""
    return msgspec.to_builtins(struct)


# ---- the route -------------------------------------------------------------------------------


class _Call:
    """One POST /v1/responses: what the response object repeats of the request, and its end."""

    def __init__(self, data: ResponsesRequest, model: str, gen: Generation, count_tokens: Callable[[str], int]) -> None:
        self.data, self.gen, self.count_tokens = data, gen, count_tokens
        self.output = _Output()
        self.response = ResponseObject(
            id=gen.rid, created_at=int(time.time()), model=model, status="in_progress", output=[],
            tools=data.tools or [], tool_choice=data.tool_choice or ("auto" if data.tools else "none"),
            parallel_tool_calls=data.parallel_tool_calls, text=data.text or TextConfig(),
            instructions=data.instructions, max_output_tokens=data.max_output_tokens,
            metadata=data.metadata or {}, previous_response_id=data.previous_response_id, reasoning=data.reasoning,
            store=data.store, temperature=data.temperature, top_p=data.top_p, user=data.user)

    @property
    def sample(self) -> Sample:
        return self.gen.samples[0]

    def finished(self) -> ResponseObject:
        """The response object once the answer is complete."""
        r = self.response
        r.output = self.output.items
        r.status = "incomplete" if self.sample.finish_reason == "length" else "completed"
        r.completed_at = int(time.time())
        if r.status == "incomplete":
            r.incomplete_details = IncompleteDetails(reason="max_output_tokens")
        gen = self.gen
        reasoning = self.count_tokens(self.sample.reasoning) if self.sample.reasoning else 0
        r.usage = ResponseUsage(
            input_tokens=gen.prompt_tokens, input_tokens_details=InputTokensDetails(cached_tokens=gen.cached_tokens),
            output_tokens=gen.completion_tokens, output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
            total_tokens=gen.prompt_tokens + gen.completion_tokens)
        return r

    def failed(self, exc: BaseException) -> ResponseObject:
        kind = exc.kind if isinstance(exc, RequestError) else ErrorKind.INTERNAL
        message = error_payload(exc)["error"]["message"]
        self.response.output, self.response.status = self.output.items, "failed"
        self.response.error = ResponseError(code=FAILURE_CODES.get(kind, "server_error"), message=message)
        return self.response


def _owner(request: Request[Any, Any, Any]) -> str:
    return api_key_owner(request.scope, request.app.state.server.settings.api_key)


async def _stored(request: Request[Any, Any, Any], response_id: str, param: str | None = None) -> tuple[bytes, bytes]:
    found = await request.app.state.server.responses.get(_owner(request), response_id)
    if found is None:
        raise RequestError(ErrorKind.NOT_FOUND, f"no stored response with id {response_id!r}", param)
    return found


@post("/v1/responses", status_code=200, summary="OpenAI responses", opt={"error_statuses": (404, 429, 503)})
async def create_response(request: Request[Any, Any, Any], data: ResponsesRequest) -> Response[Any]:
    state = request.app.state.server
    items = input_items(data.input)
    if data.previous_response_id is not None:
        response, history = await _stored(request, data.previous_response_id, "previous_response_id")
        earlier = msgspec.json.decode(response, type=ResponseObject).output
        items = msgspec.json.decode(history) + _output_as_items(earlier) + items
    messages = chat_messages(items, data.instructions)
    served = state.route(data.model, images=has_image_parts(messages))
    frontend = served.frontend
    tools = frontend.tool_use(chat_tools(data.tools), chat_tool_choice(data.tool_choice), data.parallel_tool_calls)
    prompt = await served.tokenizers.run(encode_chat, messages, max_context_len=frontend.max_context_len,
                                         image_rules=state.image_rules, tools=tools and tools.tools)
    schema = format_schema(data.text)
    params, names = door_params("responses", data, json_schema=schema)
    names.update(prompt="input", json_schema="text")
    gen = await frontend.generation_off_loop(_new_id("resp"), [prompt.ids], params, names=names,
                                             images=[prompt.images], separate_reasoning=True, tools=tools)
    tok = frontend.tokenizer.tokenizer
    call = _Call(data, served.model_id, gen, lambda text: len(tok(text, add_special_tokens=False)["input_ids"]))

    async def store(response: ResponseObject) -> None:
        if data.store:
            await state.responses.put(_owner(request), response.id, _json.encode(response), _json.encode(items))

    inflight.send(state, served.pool, gen)
    if data.stream:
        return Stream(_events(state, call, store), media_type="text/event-stream", headers=SSE_HEADERS,
                      background=inflight.release_after(state, gen))

    async def run() -> None:
        async for d in inflight.deltas(state, gen):
            call.output.take(d)

    try:
        await until_disconnect(request, run())
    except ClientDisconnected:
        return Response(b"", status_code=499)
    call.output.close(call.sample.finish_reason)
    response = call.finished()
    await store(response)
    return Response(response)


async def _events(state: Any, call: _Call, store: Callable[[ResponseObject], Any]) -> AsyncIterator[bytes]:
    """The Responses event stream: created, in_progress, the items' events, then completed
    (incomplete when the answer ran out of max_output_tokens, failed on an error)."""
    sequence = 0

    def event(payload: dict[str, Any]) -> bytes:
        nonlocal sequence
        payload["sequence_number"] = sequence
        sequence += 1
        return b"event: " + payload["type"].encode() + b"\ndata: " + _json.encode(payload) + b"\n\n"

    yield event({"type": "response.created", "response": _copy(call.response)})
    yield event({"type": "response.in_progress", "response": _copy(call.response)})
    try:
        async for d in inflight.deltas(state, call.gen):
            for e in call.output.take(d):
                yield event(e)
        for e in call.output.close(call.sample.finish_reason):
            yield event(e)
        response = call.finished()
        await store(response)
        yield event({"type": f"response.{response.status}", "response": _copy(response)})
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # after the 200 went out: the response failed
        response = call.failed(exc)
        yield event({"type": "response.failed", "response": _copy(response)})
        try:
            await store(response)
        except Exception as store_exc:  # the client has its answer; say what was not kept
            yield event({**error_payload(store_exc)["error"], "type": "error"})


@get("/v1/responses/{response_id:str}", summary="A stored response", opt={"error_statuses": (400, 404)})
async def get_response(request: Request[Any, Any, Any], response_id: str) -> Response[ResponseObject]:
    response, _ = await _stored(request, response_id)
    return Response(msgspec.json.decode(response, type=ResponseObject))


@delete("/v1/responses/{response_id:str}", status_code=200, summary="Delete a stored response",
        opt={"error_statuses": (400, 404)})
async def delete_response(request: Request[Any, Any, Any], response_id: str) -> DeletedResponse:
    if not await request.app.state.server.responses.delete(_owner(request), response_id):
        raise RequestError(ErrorKind.NOT_FOUND, f"no stored response with id {response_id!r}")
    return DeletedResponse(id=response_id)


@get("/v1/responses/{response_id:str}/input_items", summary="A stored response's input items",
     opt={"error_statuses": (400, 404)})
async def list_input_items(
    request: Request[Any, Any, Any], response_id: str,
    limit: int = Parameter(default=20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = Parameter(default=None),
) -> InputItemList:
    """The conversation items a response answered (earlier turns' included), newest first
    unless order=asc; `after` an item id to page on from."""
    _, history = await _stored(request, response_id)
    items = msgspec.json.decode(history)
    if order == "desc":
        items.reverse()
    if after is not None:
        at = next((i for i, item in enumerate(items) if item.get("id") == after), None)
        if at is None:
            raise invalid(f"'after': no item {after!r} in this response's input", "after")
        items = items[at + 1:]
    page = items[:limit]
    return InputItemList(data=page, first_id=page[0]["id"] if page else None,
                         last_id=page[-1]["id"] if page else None, has_more=len(items) > limit)


RESPONSES_ROUTES = [create_response, get_response, delete_response, list_input_items]
