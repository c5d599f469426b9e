"""Bodies of POST /generate: the original mini-sglang's `{"prompt": ..., "stream": true}`, plus sglang's
native fields (`text`, `input_ids`, `sampling_params`)."""

from __future__ import annotations

from typing import Any

import msgspec

from minisgl.sampling_params import door_struct

# sglang's sampling_params object, by its names, from the fields' one declaration
GenerateSamplingParams = door_struct("GenerateSamplingParams", "generate")
# the original mini-sglang's flat fields, also accepted beside `sampling_params` (which wins)
SeedSampling = door_struct("SeedSampling", "generate",
                           only=("max_new_tokens", "temperature", "top_p", "top_k", "stop", "seed"))


class GenerateRequest(SeedSampling, kw_only=True):
    prompt: str | None = None
    text: str | None = None
    input_ids: list[int] | None = None
    stream: bool = False
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
