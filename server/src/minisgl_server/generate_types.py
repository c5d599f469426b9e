"""Bodies of POST /generate: the seed's `{"prompt": ..., "stream": true}`, plus sglang's
native fields (`text`, `input_ids`, `sampling_params`)."""

from __future__ import annotations

from typing import Any

import msgspec


class GenerateSamplingParams(msgspec.Struct, kw_only=True):
    """sglang's sampling_params object (its names)."""

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    seed: int | None = None
    n: int | None = None
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None


class GenerateRequest(msgspec.Struct, kw_only=True):
    prompt: str | None = None
    text: str | None = None
    input_ids: list[int] | None = None
    stream: bool = False
    # the seed's flat fields, also accepted
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    sampling_params: GenerateSamplingParams | None = None
    rid: str | None = None


class GenerateMetaInfo(msgspec.Struct, kw_only=True):
    id: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: dict[str, Any]
    e2e_latency: float


class GenerateResponse(msgspec.Struct, kw_only=True):
    text: str
    output_ids: list[int]
    meta_info: GenerateMetaInfo
