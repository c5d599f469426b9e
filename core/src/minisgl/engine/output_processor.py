"""What a frontend does with EngineOutputs, shared by `minisgl.LLM` and the server.

- `fan_out`: a request with n > 1 becomes n engine requests (`<rid>-<i>`), each n = 1;
  with a seed, sequence i uses seed + i (vLLM's convention), so the whole set is
  reproducible and the sequences differ.
- `SequenceStream`: one engine request's stream: token ids to text deltas through the
  `IncrementalDetokenizer`, stop strings, and the finish reason. When the engine finishes a
  request with "stop", the last new token is the stop token (EOS or one of
  stop_token_ids): it counts in token_ids and completion_tokens but never in the text.
  When a stop string matches, `SequenceDelta.stop_hit` is set: the frontend must call
  `Engine.abort_request(rid, "stop")` and ignore later outputs for that rid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..sampling_params import SamplingParams
from .detokenizer import IncrementalDetokenizer
from .messages import EngineOutput


def fan_out(rid: str, params: SamplingParams) -> list[tuple[str, SamplingParams]]:
    if params.n <= 1:
        return [(rid, params)]
    out = []
    for i in range(params.n):
        seed = None if params.seed is None else params.seed + i
        out.append((f"{rid}-{i}", msgspec.structs.replace(params, n=1, seed=seed)))
    return out


@dataclass
class SequenceDelta:
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finished: bool = False
    finish_reason: str | None = None
    stop_hit: bool = False  # a stop string matched: abort the engine request with "stop"
    error: str | None = None


@dataclass
class SequenceStream:
    rid: str
    tokenizer: Any
    params: SamplingParams
    eos_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        self.detok = IncrementalDetokenizer(
            self.tokenizer, skip_special_tokens=self.params.skip_special_tokens, stop=self.params.stop
        )
        stop = set(self.params.stop_token_ids)
        if not self.params.ignore_eos:
            stop.update(self.eos_token_ids)
        self._stop_ids = stop

    def update(self, out: EngineOutput) -> SequenceDelta | None:
        """Fold one engine output in; None once this sequence has finished."""
        if self.finished:
            return None
        self.prompt_tokens = out.prompt_tokens or self.prompt_tokens
        self.cached_tokens = out.cached_tokens or self.cached_tokens
        new = list(out.new_token_ids)
        self.token_ids.extend(new)
        if out.logprobs:
            self.logprobs.extend(out.logprobs)
        if out.top_logprobs:
            self.top_logprobs.extend(out.top_logprobs)
        visible = new
        if out.finished and out.finish_reason == "stop" and new and new[-1] in self._stop_ids:
            visible = new[:-1]
        text, stop_hit = self.detok.push(visible)
        delta = SequenceDelta(text=text, token_ids=new, logprobs=out.logprobs, top_logprobs=out.top_logprobs)
        if stop_hit:
            delta.finished, delta.finish_reason, delta.stop_hit = True, "stop", True
        elif out.finished:
            delta.text += self.detok.finish()
            delta.finished, delta.finish_reason = True, out.finish_reason
            delta.error = self.error = out.error
        self.text += delta.text
        if delta.finished:
            self.finished, self.finish_reason = True, delta.finish_reason
        return delta
