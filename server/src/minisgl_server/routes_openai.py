"""POST /v1/completions and POST /v1/chat/completions (stream and non-stream)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream
from msgspec.structs import replace

from minisgl.sampling_params import SamplingParams

from .errors import APIError, bad_request
from .generation import ChoiceDelta, ChoiceSpec, Generation, TokenLogprobInfo, new_request_id
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
    PromptTokensDetails,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from .prompts import chat_messages, check_model, check_token_ids, completion_prompts, ready_state
from .sampling import as_stop_list, derive_seed, fit_context, make_sampling
from .streaming import SSE_DONE, SSE_HEADERS, ClientDisconnected, error_payload, sse_event, until_disconnect
from .tokenization import ChatTemplateError


def _sampling(state: Any, data: CompletionRequest | ChatCompletionRequest, max_tokens: int | None,
              logprobs: bool, top_logprobs: int) -> SamplingParams:
    if data.stop_token_ids:
        check_token_ids(state, data.stop_token_ids, "stop_token_ids")
    return make_sampling(
        max_new_tokens=max_tokens,
        min_new_tokens=data.min_tokens,
        temperature=data.temperature,
        top_p=data.top_p,
        top_k=data.top_k,
        min_p=data.min_p,
        repetition_penalty=data.repetition_penalty,
        frequency_penalty=data.frequency_penalty,
        presence_penalty=data.presence_penalty,
        stop=as_stop_list(data.stop),
        stop_token_ids=data.stop_token_ids,
        ignore_eos=data.ignore_eos,
        seed=data.seed,
        n=data.n,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        skip_special_tokens=data.skip_special_tokens,
    )


def _choices(state: Any, prompts: list[list[int]], base: SamplingParams, n: int, param: str) -> list[ChoiceSpec]:
    specs = []
    for p, ids in enumerate(prompts):
        fitted = fit_context(replace(base), len(ids), state.max_context_len, state.settings.max_new_tokens_default, param)
        for j in range(n):
            specs.append(ChoiceSpec(index=p * n + j, input_ids=ids, sampling=replace(fitted, n=1, seed=derive_seed(base.seed, j))))
    return specs


def _usage(gen: Generation) -> Usage:
    return Usage(
        prompt_tokens=gen.prompt_tokens,
        completion_tokens=gen.completion_tokens,
        total_tokens=gen.prompt_tokens + gen.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=gen.cached_tokens),
    )


def _failed(deltas: list[ChoiceDelta]) -> None:
    for d in deltas:
        if d.finish_reason == "error":
            too_long = any(w in (d.error or "") for w in ("context", "fit", "capacity", "too long"))
            raise APIError(400 if too_long else 503, d.error or "engine error", code="engine_error")


async def _respond(request: Request[Any, Any, Any], gen: Generation) -> list[ChoiceDelta] | None:
    try:
        deltas = await until_disconnect(request, gen.collect())
    except ClientDisconnected:
        return None
    _failed(deltas)
    return deltas


def _stream(gen: Generation, events: AsyncIterator[bytes]) -> Stream:
    async def framed() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an error after the 200 went out: an error event, then [DONE]
            yield sse_event(error_payload(exc))
        yield SSE_DONE

    return Stream(framed(), media_type="text/event-stream", headers=SSE_HEADERS, background=BackgroundTask(_close, gen))


async def _close(gen: Generation) -> None:
    gen.close()


# ---- /v1/completions ----------------------------------------------------------------------


def _completion_logprobs(state: Any, infos: list[TokenLogprobInfo] | None, offset: int) -> CompletionLogprobs | None:
    if infos is None:
        return None
    tok = state.tokenizer
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
    state = ready_state(request)
    check_model(state, data.model)
    prompts = completion_prompts(state, data.prompt)
    want_logprobs = data.logprobs is not None
    base = _sampling(state, data, data.max_tokens, want_logprobs, data.logprobs or 0)
    gen = Generation(state, new_request_id("cmpl"), _choices(state, prompts, base, data.n, "max_tokens"))
    model = state.model_id
    echo = [state.tokenizer.decode(p) for p in prompts] if data.echo else None
    gen.start()
    if data.stream:
        return _stream(gen, _completion_events(state, gen, model, data, echo))
    deltas = await _respond(request, gen)
    if deltas is None:
        return Response(b"", status_code=499)
    choices = [
        CompletionChoice(
            index=d.index,
            text=(echo[d.index // data.n] if echo else "") + d.text,
            finish_reason=d.finish_reason,
            logprobs=_completion_logprobs(state, d.logprobs, 0) if want_logprobs else None,
        )
        for d in deltas
    ]
    return Response(CompletionResponse(id=gen.request_id, model=model, choices=choices, usage=_usage(gen)))


async def _completion_events(state: Any, gen: Generation, model: str, data: CompletionRequest, echo: list[str] | None) -> AsyncIterator[bytes]:
    created = int(time.time())
    include_usage = bool(data.stream_options and data.stream_options.include_usage)
    offsets: dict[int, int] = {}
    if echo:
        for c in gen.choices:
            text = echo[c.spec.index // data.n]
            offsets[c.spec.index] = len(text)
            yield sse_event(CompletionChunk(id=gen.request_id, model=model, created=created,
                                            choices=[CompletionChoice(index=c.spec.index, text=text, finish_reason=None)]))
    async for d in gen.deltas():
        if d.error is not None:
            raise _engine_error(d)
        lp = _completion_logprobs(state, d.logprobs, offsets.get(d.index, 0)) if data.logprobs is not None else None
        offsets[d.index] = offsets.get(d.index, 0) + len(d.text)
        chunk = CompletionChunk(id=gen.request_id, model=model, created=created,
                                choices=[CompletionChoice(index=d.index, text=d.text, finish_reason=d.finish_reason, logprobs=lp)])
        yield sse_event(chunk)
    if include_usage:
        yield sse_event(CompletionChunk(id=gen.request_id, model=model, created=created, choices=[], usage=_usage(gen)))


def _engine_error(d: ChoiceDelta) -> Exception:
    return APIError(503, d.error or "engine error", code="engine_error")


# ---- /v1/chat/completions -----------------------------------------------------------------


def _chat_logprobs(state: Any, infos: list[TokenLogprobInfo] | None) -> ChatLogprobs | None:
    if infos is None:
        return None
    tok = state.tokenizer
    content = []
    for info in infos:
        text = tok.token_text(info.token_id)
        tops = [TopLogprob(token=tok.token_text(t), logprob=lp, bytes=list(tok.token_text(t).encode())) for t, lp in info.top]
        content.append(TokenLogprob(token=text, logprob=info.logprob, bytes=list(text.encode()), top_logprobs=tops))
    return ChatLogprobs(content=content)


@post("/v1/chat/completions", status_code=200, summary="OpenAI chat completions")
async def chat_completions(request: Request[Any, Any, Any], data: ChatCompletionRequest) -> Response[Any]:
    state = ready_state(request)
    check_model(state, data.model)
    messages = chat_messages(data.messages)
    if data.top_logprobs and not data.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    try:
        text = state.tokenizer.render_chat(
            messages,
            add_generation_prompt=data.add_generation_prompt,
            continue_final_message=data.continue_final_message,
            template_kwargs=data.chat_template_kwargs,
        )
    except ChatTemplateError as exc:
        raise bad_request(str(exc), param="messages") from None
    ids = state.tokenizer.encode_chat(text)
    max_tokens = data.max_completion_tokens if data.max_completion_tokens is not None else data.max_tokens
    param = "max_completion_tokens" if data.max_completion_tokens is not None else "max_tokens"
    base = _sampling(state, data, max_tokens, data.logprobs, data.top_logprobs or 0)
    gen = Generation(state, new_request_id("chatcmpl"), _choices(state, [ids], base, data.n, param))
    model = state.model_id
    gen.start()
    if data.stream:
        return _stream(gen, _chat_events(state, gen, model, data))
    deltas = await _respond(request, gen)
    if deltas is None:
        return Response(b"", status_code=499)
    choices = [
        ChatChoice(
            index=d.index,
            message=AssistantMessage(content=d.text),
            finish_reason=d.finish_reason,
            logprobs=_chat_logprobs(state, d.logprobs) if data.logprobs else None,
        )
        for d in deltas
    ]
    return Response(ChatCompletionResponse(id=gen.request_id, model=model, choices=choices, usage=_usage(gen)))


async def _chat_events(state: Any, gen: Generation, model: str, data: ChatCompletionRequest) -> AsyncIterator[bytes]:
    created = int(time.time())
    include_usage = bool(data.stream_options and data.stream_options.include_usage)

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        return sse_event(ChatCompletionChunk(id=gen.request_id, model=model, created=created, choices=choices, usage=usage))

    for c in gen.choices:
        yield chunk([ChatChunkChoice(index=c.spec.index, delta=DeltaMessage(role="assistant", content=""))])
    async for d in gen.deltas():
        if d.error is not None:
            raise _engine_error(d)
        delta = DeltaMessage(content=d.text) if d.text else DeltaMessage()
        lp = _chat_logprobs(state, d.logprobs) if data.logprobs else None
        yield chunk([ChatChunkChoice(index=d.index, delta=delta, finish_reason=d.finish_reason, logprobs=lp)])
    if include_usage:
        yield chunk([], _usage(gen))
