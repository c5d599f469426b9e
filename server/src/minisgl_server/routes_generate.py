"""POST /generate: the original mini-sglang's streaming format and sglang's native request fields.

Stream: JSON lines `{"text_delta": ...}` ... `{"event": "done", ...}` (an error arrives as
`{"event": "error", "error": {...}}` before the done line). Non-stream: sglang's
`{"text", "output_ids", "meta_info"}` (a list of them when n > 1)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from minisgl.frontend.errors import invalid
from minisgl.frontend.generation import Generation, Sample
from minisgl.frontend.tokenizer import encode_prompts
from minisgl.sampling_params import door_params

from . import inflight
from .generate_types import GenerateMetaInfo, GenerateRequest, GenerateResponse
from .streaming import error_payload, json_line, new_request_id

RID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")  # ends up in logs and engine frames


def _prompt(data: GenerateRequest) -> tuple[str, Any]:
    given = [name for name in ("prompt", "text", "input_ids") if getattr(data, name) is not None]
    if len(given) != 1:
        raise invalid("give exactly one of 'prompt', 'text' or 'input_ids'", "prompt")
    name = given[0]
    value = getattr(data, name)
    if name == "input_ids" and not value:
        raise invalid("'input_ids' is empty", name)
    # one prompt: token ids stay one prompt, whatever they look like
    return name, [value] if name == "input_ids" else value


def _meta(gen: Generation, s: Sample) -> GenerateMetaInfo:
    return GenerateMetaInfo(
        id=s.rid,
        prompt_tokens=s.prompt_tokens or len(s.prompt_ids),
        completion_tokens=len(s.token_ids),
        cached_tokens=s.cached_tokens,
        finish_reason={"type": s.finish_reason},
        e2e_latency=time.perf_counter() - gen.started_at,
    )


@post("/generate", status_code=200, summary="generate text (the original mini-sglang's format and sglang's)")
async def generate(request: Request[Any, Any, Any], data: GenerateRequest) -> Response[Any]:
    state = request.app.state.server
    served = state.route()
    frontend = served.frontend
    if data.rid is not None and not RID.match(data.rid):
        raise invalid("'rid' must be 1-128 characters of letters, digits and _ . : -", "rid")
    param, prompt = _prompt(data)
    prompts = await served.tokenizers.run(encode_prompts, prompt, param, frontend.max_context_len)
    # sglang's sampling_params win over the original mini-sglang's flat fields
    params, names = door_params("generate", data.sampling_params, data)
    gen = await frontend.generation_off_loop(data.rid or new_request_id("gen"), prompts, params,
                                             names=names | {"prompt": param})
    inflight.send(state, served.pool, gen)
    if data.stream:
        return Stream(_lines(state, gen), media_type="application/x-ndjson",
                      background=inflight.release_after(state, gen))
    if not await inflight.finish(request, state, gen):
        return Response(b"", status_code=499)
    answers = [GenerateResponse(text=s.text, output_ids=s.token_ids, meta_info=_meta(gen, s)) for s in gen.samples]
    return Response(answers[0] if len(answers) == 1 else answers)


async def _lines(state: Any, gen: Generation) -> AsyncIterator[bytes]:
    many = len(gen.samples) > 1
    try:
        async for d in inflight.deltas(state, gen):
            if d.text:
                yield json_line({"text_delta": d.text, "index": d.index} if many else {"text_delta": d.text})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        yield json_line({"event": "error", **error_payload(exc)})
        yield json_line({"event": "done", "finish_reason": "error"})
        return
    metas = [_meta(gen, s) for s in gen.samples]
    yield json_line({"event": "done", "finish_reason": gen.samples[0].finish_reason,
                     "meta_info": metas if many else metas[0]})
