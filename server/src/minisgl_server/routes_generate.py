"""POST /generate: the seed's streaming format and sglang's native request fields.

Stream: JSON lines `{"text_delta": ...}` ... `{"event": "done", ...}` (an error arrives as
`{"event": "error", "error": {...}}` before the done line). Non-stream: sglang's
`{"text", "output_ids", "meta_info"}` (a list of them when n > 1)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream
from msgspec.structs import replace

from .errors import APIError, bad_request
from .generate_types import GenerateMetaInfo, GenerateRequest, GenerateResponse
from .generation import ChoiceSpec, Generation, new_request_id
from .prompts import check_token_ids, ready_state
from .sampling import as_stop_list, derive_seed, fit_context, make_sampling
from .streaming import ClientDisconnected, error_payload, json_line, until_disconnect

# sglang's own names, so 400s name what the client sent
GENERATE_NAMES: dict[str, str] = {}


def _input_ids(state: Any, data: GenerateRequest) -> list[int]:
    given = [name for name in ("prompt", "text", "input_ids") if getattr(data, name) is not None]
    if len(given) != 1:
        raise bad_request("give exactly one of 'prompt', 'text' or 'input_ids'", param="prompt")
    if data.input_ids is not None:
        ids = check_token_ids(state, list(data.input_ids), "input_ids")
    else:
        ids = state.tokenizer.encode(data.prompt if data.prompt is not None else data.text)
    if not ids:
        raise bad_request(f"'{given[0]}' is empty", param=given[0])
    return ids


def _sampling(state: Any, data: GenerateRequest):
    sp = data.sampling_params

    def pick(name: str, flat: Any = None) -> Any:
        """sampling_params wins over the seed's flat fields."""
        value = getattr(sp, name) if sp is not None else None
        return flat if value is None else value

    stop_ids = pick("stop_token_ids")
    if stop_ids:
        check_token_ids(state, stop_ids, "stop_token_ids")
    return make_sampling(
        GENERATE_NAMES,
        max_new_tokens=pick("max_new_tokens", data.max_new_tokens),
        min_new_tokens=pick("min_new_tokens"),
        temperature=pick("temperature", data.temperature),
        top_p=pick("top_p", data.top_p),
        top_k=pick("top_k", data.top_k),
        min_p=pick("min_p"),
        repetition_penalty=pick("repetition_penalty"),
        frequency_penalty=pick("frequency_penalty"),
        presence_penalty=pick("presence_penalty"),
        stop=as_stop_list(pick("stop", data.stop)),
        stop_token_ids=stop_ids,
        ignore_eos=pick("ignore_eos"),
        skip_special_tokens=pick("skip_special_tokens"),
        seed=pick("seed", data.seed),
        n=pick("n"),
    )


def _meta(gen: Generation, index: int, finish_reason: str | None) -> GenerateMetaInfo:
    c = gen.choices[index]
    return GenerateMetaInfo(
        id=c.rid,
        prompt_tokens=c.prompt_tokens or len(c.spec.input_ids),
        completion_tokens=c.completion_tokens,
        cached_tokens=c.cached_tokens,
        finish_reason={"type": finish_reason},
        e2e_latency=time.perf_counter() - gen.started_at,
    )


@post("/generate", status_code=200, summary="generate text (the seed's format and sglang's)")
async def generate(request: Request[Any, Any, Any], data: GenerateRequest) -> Response[Any]:
    state = ready_state(request)
    ids = _input_ids(state, data)
    base = fit_context(_sampling(state, data), len(ids), state.max_context_len, state.settings.max_new_tokens_default, "max_new_tokens")
    choices = [ChoiceSpec(index=j, input_ids=ids, sampling=replace(base, n=1, seed=derive_seed(base.seed, j))) for j in range(base.n)]
    gen = Generation(state, data.rid or new_request_id("gen"), choices)
    gen.start()
    if data.stream:
        return Stream(_lines(gen), media_type="application/x-ndjson", background=BackgroundTask(_close, gen))
    try:
        deltas = await until_disconnect(request, gen.collect())
    except ClientDisconnected:
        return Response(b"", status_code=499)
    for d in deltas:
        if d.finish_reason == "error":
            raise APIError(503, d.error or "engine error", code="engine_error")
    answers = [GenerateResponse(text=d.text, output_ids=d.token_ids, meta_info=_meta(gen, d.index, d.finish_reason)) for d in deltas]
    return Response(answers[0] if len(answers) == 1 else answers)


async def _close(gen: Generation) -> None:
    gen.close()


async def _lines(gen: Generation) -> AsyncIterator[bytes]:
    finish: dict[int, str | None] = {}
    try:
        async for d in gen.deltas():
            if d.error is not None:
                raise APIError(503, d.error, code="engine_error")
            if d.text:
                line: dict[str, Any] = {"text_delta": d.text}
                if len(gen.choices) > 1:
                    line["index"] = d.index
                yield json_line(line)
            if d.finish_reason:
                finish[d.index] = d.finish_reason
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        yield json_line({"event": "error", **error_payload(exc)})
        yield json_line({"event": "done", "finish_reason": "error"})
        return
    done: dict[str, Any] = {"event": "done", "finish_reason": finish.get(0)}
    done["meta_info"] = [_meta(gen, i, finish.get(i)) for i in range(len(gen.choices))] if len(gen.choices) > 1 else _meta(gen, 0, finish.get(0))
    yield json_line(done)
