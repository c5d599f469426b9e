"""POST /v1/completions and POST /v1/chat/completions (stream and non-stream): translations
between OpenAI's JSON and the request layer (minisgl.frontend), nothing more."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from minisgl.frontend.errors import invalid
from minisgl.frontend.generation import Generation, TokenLogprob
from minisgl.frontend.tokenizer import encode_chat, encode_prompts, has_image_parts
from minisgl.grammar import GrammarError, response_format_schema
from minisgl.sampling_params import SamplingParams, door_params

from . import inflight
from .openai_types import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    FunctionCall,
    FunctionCallDelta,
    PromptTokensDetails,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from .openai_types import (
    TokenLogprob as OpenAITokenLogprob,
)
from .streaming import (
    SSE_DONE,
    SSE_HEADERS,
    error_payload,
    new_request_id,
    sse_event,
)


def _sampling(door: str, data: CompletionRequest | ChatCompletionRequest, prompt_param: str,
              **given: Any) -> tuple[SamplingParams, dict[str, str]]:
    """The request's SamplingParams (response_format as its json_schema), and the names the
    client gave the fields and the prompt; the request layer validates them."""
    try:
        schema = response_format_schema(data.response_format)
    except GrammarError as exc:
        raise invalid(f"'response_format': {exc}", "response_format") from None
    if schema is not None and data.json_schema is not None:
        raise invalid("give 'response_format' or 'json_schema', not both", "json_schema")
    params, names = door_params(door, data, json_schema=schema, **given)
    names["prompt"] = prompt_param
    if data.response_format is not None:
        names["json_schema"] = "response_format"
    return params, names


def _usage(gen: Generation) -> Usage:
    return Usage(
        prompt_tokens=gen.prompt_tokens,
        completion_tokens=gen.completion_tokens,
        total_tokens=gen.prompt_tokens + gen.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=gen.cached_tokens),
    )


def _stream(state: Any, gen: Generation, events: AsyncIterator[bytes]) -> Stream:
    async def framed() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an error after the 200 went out: an error event, then [DONE]
            yield sse_event(error_payload(exc))
        yield SSE_DONE

    return Stream(framed(), media_type="text/event-stream", headers=SSE_HEADERS,
                  background=inflight.release_after(state, gen))


# ---- /v1/completions ----------------------------------------------------------------------


def _completion_logprobs(tok: Any, infos: list[TokenLogprob] | None, offset: int) -> CompletionLogprobs | None:
    if infos is None:
        return None
    out = CompletionLogprobs()
    for info in infos:
        text = tok.token_text(info.token_id)
        out.tokens.append(text)
        out.token_logprobs.append(info.logprob)
        out.top_logprobs.append({tok.token_text(t): lp for t, lp in info.top} if info.top else None)
        out.text_offset.append(offset)
        offset += len(text)
    return out


@post("/v1/completions", status_code=200, summary="OpenAI completions")
async def completions(request: Request[Any, Any, Any], data: CompletionRequest) -> Response[Any]:
    state = request.app.state.server
    served = state.route(data.model)
    frontend = served.frontend
    prompts = await served.tokenizers.run(encode_prompts, data.prompt, max_context_len=frontend.max_context_len)
    params, names = _sampling("completions", data, "prompt", logprobs=data.logprobs is not None)
    gen = await frontend.generation_off_loop(new_request_id("cmpl"), prompts, params, names=names)
    tok = frontend.tokenizer
    echo = [tok.decode(p) for p in prompts] if data.echo else None
    inflight.send(state, served.pool, gen)
    if data.stream:
        return _stream(state, gen, _completion_events(tok, state, gen, served.model_id, data, echo))
    if not await inflight.finish(request, state, gen):
        return Response(b"", status_code=499)
    choices = [
        CompletionChoice(
            index=s.index,
            text=(echo[s.prompt_index] if echo else "") + s.text,
            finish_reason=s.finish_reason,
            logprobs=_completion_logprobs(tok, s.logprobs, 0) if s.wants_logprobs else None,
        )
        for s in gen.samples
    ]
    return Response(CompletionResponse(id=gen.rid, model=served.model_id, choices=choices, usage=_usage(gen)))


async def _completion_events(tok: Any, state: Any, gen: Generation, model: str, data: CompletionRequest,
                             echo: list[str] | None) -> AsyncIterator[bytes]:
    created = int(time.time())

    every = data.stream_options is not None and data.stream_options.usage_on_every_chunk

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        usage = usage or (_usage(gen) if every else None)
        return sse_event(CompletionChunk(id=gen.rid, model=model, created=created, choices=choices, usage=usage))

    offsets: dict[int, int] = {}
    if echo:
        for s in gen.samples:
            offsets[s.index] = len(echo[s.prompt_index])
            yield chunk([CompletionChoice(index=s.index, text=echo[s.prompt_index], finish_reason=None)])
    async for d in inflight.deltas(state, gen):
        lp = _completion_logprobs(tok, d.logprobs, offsets.get(d.index, 0)) if data.logprobs is not None else None
        offsets[d.index] = offsets.get(d.index, 0) + len(d.text)
        yield chunk([CompletionChoice(index=d.index, text=d.text, finish_reason=d.finish_reason, logprobs=lp)])
    if data.stream_options and data.stream_options.include_usage:
        yield chunk([], _usage(gen))


# ---- /v1/chat/completions -----------------------------------------------------------------


def _chat_logprobs(tok: Any, infos: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if infos is None:
        return None
    content = []
    for info in infos:
        text = tok.token_text(info.token_id)
        tops = [TopLogprob(token=tok.token_text(t), logprob=lp, bytes=list(tok.token_text(t).encode())) for t, lp in info.top]
        content.append(OpenAITokenLogprob(token=text, logprob=info.logprob, bytes=list(text.encode()), top_logprobs=tops))
    return ChatLogprobs(content=content)


async def start_chat(state: Any, rid: str, model: str | None, messages: list[dict[str, Any]],
                     sampling: Callable[[], tuple[SamplingParams, dict[str, str]]], *, tools: Any = None,
                     tool_choice: Any = None, parallel_tool_calls: bool = True, separate_reasoning: bool = True,
                     **template: Any) -> tuple[Any, Generation]:
    """A chat request, in OpenAI's message shapes, on its way: routed (to the vision model
    when it holds images), its tools checked, its prompt rendered, its Generation sent.
    Every chat-shaped door calls it (`sampling` gives its checked parameters, after the
    tools and before the prompt's fit)."""
    served = state.route(model, images=has_image_parts(messages))
    frontend = served.frontend
    use = frontend.tool_use(tools, tool_choice, parallel_tool_calls)
    prompt = await served.tokenizers.run(
        encode_chat, messages, max_context_len=frontend.max_context_len, image_rules=state.image_rules,
        tools=use and use.tools, tools_writer=use and use.writer, **template,
    )
    params, names = sampling()
    gen = await frontend.generation_off_loop(rid, [prompt.ids], params, names=names, images=[prompt.images],
                                             separate_reasoning=separate_reasoning, tools=use)
    inflight.send(state, served.pool, gen)
    return served, gen


@post("/v1/chat/completions", status_code=200, summary="OpenAI chat completions")
async def chat_completions(request: Request[Any, Any, Any], data: ChatCompletionRequest) -> Response[Any]:
    state = request.app.state.server
    if data.top_logprobs and not data.logprobs:
        raise invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    served, gen = await start_chat(
        state, new_request_id("chatcmpl"), data.model, msgspec.to_builtins(data.messages),
        lambda: _sampling("chat", data, "messages"), tools=msgspec.to_builtins(data.tools),
        tool_choice=msgspec.to_builtins(data.tool_choice), parallel_tool_calls=data.parallel_tool_calls,
        separate_reasoning=data.separate_reasoning, add_generation_prompt=data.add_generation_prompt,
        continue_final_message=data.continue_final_message, template_kwargs=data.chat_template_kwargs,
    )
    tok = served.frontend.tokenizer
    if data.stream:
        return _stream(state, gen, _chat_events(tok, state, gen, served.model_id, data))
    if not await inflight.finish(request, state, gen):
        return Response(b"", status_code=499)
    choices = [
        ChatChoice(
            index=s.index,
            message=AssistantMessage(content=s.text if s.text or not s.tool_calls else None,
                                     reasoning_content=s.reasoning_content,
                                     tool_calls=[ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                                                 for c in s.tool_calls] or None),
            finish_reason=s.finish_reason,
            logprobs=_chat_logprobs(tok, s.logprobs) if data.logprobs else None,
        )
        for s in gen.samples
    ]
    return Response(ChatCompletionResponse(id=gen.rid, model=served.model_id, choices=choices, usage=_usage(gen)))


async def _chat_events(tok: Any, state: Any, gen: Generation, model: str,
                       data: ChatCompletionRequest) -> AsyncIterator[bytes]:
    created = int(time.time())

    every = data.stream_options is not None and data.stream_options.usage_on_every_chunk

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        usage = usage or (_usage(gen) if every else None)
        return sse_event(ChatCompletionChunk(id=gen.rid, model=model, created=created, choices=choices, usage=usage))

    for s in gen.samples:
        yield chunk([ChatChunkChoice(index=s.index, delta=DeltaMessage(role="assistant", content=""))])
    async for d in inflight.deltas(state, gen):
        calls = [ToolCallDelta(index=c.index, id=c.id, type="function" if c.id else None,
                               function=FunctionCallDelta(name=c.name, arguments=c.arguments)) for c in d.tool_calls]
        delta = DeltaMessage(content=d.text or None, reasoning_content=d.reasoning or None, tool_calls=calls or None)
        lp = _chat_logprobs(tok, d.logprobs) if data.logprobs else None
        yield chunk([ChatChunkChoice(index=d.index, delta=delta, finish_reason=d.finish_reason, logprobs=lp)])
    if data.stream_options and data.stream_options.include_usage:
        yield chunk([], _usage(gen))
