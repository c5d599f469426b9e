"""POST /v1/embeddings (OpenAI's shape, as vLLM and sglang serve it): each input's final
hidden states pooled by the same engine and model runner that generates (--embedding-pooling
last or mean, L2-normalised unless --no-embedding-normalize), through the request layer."""

from __future__ import annotations

import base64
from typing import Any

from litestar import Request, Response, post

from minisgl.frontend.errors import invalid
from minisgl.frontend.tokenizer import encode_prompts, prompt_items

from . import inflight
from .embedding_types import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from .streaming import new_request_id

NAMES = {"prompt": "input"}  # the request layer's names for what this door calls its fields


@post("/v1/embeddings", status_code=200, summary="OpenAI embeddings: pooled final hidden states of each input")
async def embeddings(request: Request[Any, Any, Any], data: EmbeddingRequest) -> Response[Any]:
    state = request.app.state.server
    settings = state.settings
    served = state.route(data.model)
    frontend = served.frontend
    if any(item == "" for item in prompt_items(data.input)):
        raise invalid("'input' holds an empty string: an empty text has no embedding", "input")
    prompts = await served.tokenizers.run(encode_prompts, data.input, "input", max_context_len=frontend.max_context_len)
    gen = frontend.embedding(new_request_id("embd"), prompts, settings.embedding_pooling, backend=served.info.backend,
                             dimensions=data.dimensions, names=NAMES)
    inflight.send(state, served.pool, gen)
    if not await inflight.finish(request, state, gen):
        return Response(b"", status_code=499)
    vectors = gen.embeddings(normalize=settings.embedding_normalize)
    items = [Embedding(index=i, embedding=base64.b64encode(v.tobytes()).decode() if data.encoding_format == "base64"
                       else v.tolist()) for i, v in enumerate(vectors)]
    usage = EmbeddingUsage(prompt_tokens=gen.prompt_tokens, total_tokens=gen.prompt_tokens)
    return Response(EmbeddingResponse(data=items, model=served.model_id, usage=usage))
