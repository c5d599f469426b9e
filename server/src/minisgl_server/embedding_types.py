"""Bodies of POST /v1/embeddings, in OpenAI's shapes."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    # a string, a list of strings, a list of token ids, or a list of token-id lists
    # (msgspec takes one array type in a union; the request layer checks the items)
    input: str | list[Any]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32, as OpenAI's
    dimensions: int | None = None  # must be the model's embedding size: vectors are never truncated
    user: str | None = None  # accepted, not used


class Embedding(msgspec.Struct, kw_only=True):
    index: int
    embedding: list[float] | str  # a str with encoding_format "base64"
    object: str = "embedding"


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(msgspec.Struct, kw_only=True):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: str = "list"
