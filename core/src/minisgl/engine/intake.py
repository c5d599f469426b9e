"""What the engine checks of a request before the scheduler takes it. The request layer
(minisgl.frontend) has validated it and fitted it to the context already; what is checked
here is what only the engine knows (its vocabulary, its pool, whether its runner takes
images) and what a malformed frame could break."""

from __future__ import annotations

from typing import get_args

from ..frontend.errors import ErrorKind
from ..sampling_params import Pooling
from .batch import ModelRunner
from .messages import IMAGE_PAD_BASE, EngineRequest


def request_fault(er: EngineRequest, runner: ModelRunner, backend_name: str, max_context_len: int,
                  pool_tokens: int) -> tuple[ErrorKind, str] | None:
    """Why the engine cannot run `er`, or None."""
    ids, p = er.input_ids, er.sampling
    vocab = runner.vocab_size
    pads = {image.pad_id for image in er.images}
    bad = next((t for t in ids if t < 0 or (t >= vocab and t not in pads)), None)
    if not ids or bad is not None or p.max_new_tokens is None:
        why = ("an empty prompt" if not ids else "no max_new_tokens" if bad is None
               else f"token id {bad} is outside the vocabulary [0, {vocab})")
        return ErrorKind.INVALID_REQUEST, f"malformed engine request: {why}"
    if er.images and not runner.supports_images:
        return ErrorKind.UNAVAILABLE, (f"backend {backend_name} takes text only; serve vision-language models "
                                       "with --backend hf")
    if er.pooling is not None and not runner.embedding_size:
        return ErrorKind.INVALID_REQUEST, (f"backend {backend_name} does not compute embeddings; serve the model "
                                           "with --backend hf for /v1/embeddings")
    if er.pooling is not None and er.pooling not in get_args(Pooling):
        return ErrorKind.INVALID_REQUEST, f"malformed engine request: pooling {er.pooling!r} is not last or mean"
    fault = _image_fault(er)
    if fault:
        return ErrorKind.INVALID_REQUEST, f"malformed engine request: {fault}"
    if len(ids) + p.max_new_tokens > max_context_len or len(ids) >= pool_tokens:
        return ErrorKind.CONTEXT_LENGTH_EXCEEDED, (
            f"{len(ids)} prompt tokens + {p.max_new_tokens} new tokens do not fit: the context is "
            f"{max_context_len} tokens and the KV pool {pool_tokens} (raise --num-pages or --memory-ratio)")
    return None


def _image_fault(er: EngineRequest) -> str:
    """What is wrong with a request's images, or "": each image's runs must hold its pad id
    inside the prompt."""
    ids = er.input_ids
    for i, image in enumerate(er.images):
        if image.pad_id < IMAGE_PAD_BASE or not image.runs:
            return f"image {i} has no placeholder positions"
        for pos, length in image.runs:
            if pos < 0 or length <= 0 or pos + length > len(ids) or any(t != image.pad_id for t in ids[pos:pos + length]):
                return f"image {i}'s run ({pos}, {length}) does not hold its pad id in the prompt"
    return ""
