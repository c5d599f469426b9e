"""Messages between a frontend (LLM, server) and an engine. msgspec Structs, so they cross
ZeroMQ as msgpack frames unchanged. The engine deals only in token ids: detokenizing and
stop strings live in the request layer (minisgl.frontend), off the engine's critical path."""

from __future__ import annotations

import msgspec

from ..sampling_params import SamplingParams


class EngineRequest(msgspec.Struct, kw_only=True, tag="req"):
    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    priority: int = 0  # for the priority queue policy; higher runs first
    arrival_time: float = 0.0


class AbortRequest(msgspec.Struct, kw_only=True, tag="abort"):
    rid: str
    reason: str = "abort"  # "abort" (client gone) or "stop" (frontend matched a stop string)


class EngineOutput(msgspec.Struct, kw_only=True, tag="out", omit_defaults=True):
    rid: str
    new_token_ids: list[int] = []
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[float] | None = None  # one per new token
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per new token: (id, logprob)
    error: str | None = None  # set with finish_reason "error"
    error_kind: str | None = None  # a minisgl.frontend.errors.ErrorKind value, with error
