"""POST /tokenize, POST /detokenize (vLLM's shapes) and GET /version: the served model's
tokenizer, through the request layer (the same tokenizer workers and checks a generation
goes through, so the ids are the ones a generation of that prompt would run)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get, post

from minisgl import __version__
from minisgl.frontend.errors import invalid
from minisgl.frontend.tokenizer import detokenize_ids, encode_chat, has_image_parts, tokenize_text

from .tokenize_types import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse, VersionResponse


async def _ids(state: Any, data: TokenizeRequest) -> tuple[Any, list[int]]:
    if (data.prompt is None) == (data.messages is None):
        raise invalid("give exactly one of 'prompt' and 'messages'", "prompt")
    if data.prompt is not None:
        served = state.route(data.model)
        add = True if data.add_special_tokens is None else data.add_special_tokens
        ids = await served.tokenizers.run(tokenize_text, data.prompt, add, served.frontend.max_context_len)
        return served, ids
    if data.add_special_tokens:
        raise invalid("'add_special_tokens' applies to 'prompt' only: the chat template writes the special "
                      "tokens of 'messages'", "add_special_tokens")
    messages = msgspec.to_builtins(data.messages)
    served = state.route(data.model, images=has_image_parts(messages))
    prompt = await served.tokenizers.run(
        encode_chat, messages, max_context_len=served.frontend.max_context_len, image_rules=state.image_rules,
        add_generation_prompt=data.add_generation_prompt, continue_final_message=data.continue_final_message,
        template_kwargs=data.chat_template_kwargs,
    )
    return served, prompt.ids


@post("/tokenize", status_code=200, summary="token ids of a prompt or of chat messages (vLLM's shape)")
async def tokenize(request: Request[Any, Any, Any], data: TokenizeRequest) -> TokenizeResponse:
    served, ids = await _ids(request.app.state.server, data)
    strs = [served.frontend.tokenizer.token_text(t) for t in ids] if data.return_token_strs else None
    return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=served.max_context_len, token_strs=strs)


@post("/detokenize", status_code=200, summary="the text of token ids (vLLM's shape)")
async def detokenize(request: Request[Any, Any, Any], data: DetokenizeRequest) -> DetokenizeResponse:
    served = request.app.state.server.route(data.model)
    return DetokenizeResponse(prompt=await served.tokenizers.run(detokenize_ids, data.tokens))


@get("/version", summary="the minisgl version")
async def version() -> VersionResponse:
    return VersionResponse(version=__version__)
