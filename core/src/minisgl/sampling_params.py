"""Per-request sampling parameters (the public `minisgl.SamplingParams`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from .frontend.errors import invalid
from .grammar import GRAMMAR_FIELDS

SEED_RANGE = (-(1 << 63), 1 << 64)  # what msgpack carries; derived seeds wrap modulo 2**64


class SamplingParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    max_new_tokens: int | None = None  # None: settings.max_new_tokens_default
    min_new_tokens: int = 0
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = []
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True
    # structured outputs (sglang's names): at most one; see minisgl.grammar
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None

    def validate(self, names: Mapping[str, str] | None = None) -> SamplingParams:
        """Raise RequestError (a ValueError) naming the first out-of-range field, by the
        name the caller knows it by (`names` maps ours to a front door's)."""

        def bad(field: str, why: str) -> None:
            name = (names or {}).get(field, field)
            value = repr(getattr(self, field))
            if len(value) > 200:
                value = value[:200] + "..."
            raise invalid(f"invalid sampling parameter '{name}' = {value}: {why}", param=name)

        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            bad("max_new_tokens", "must be >= 1")
        if self.min_new_tokens < 0:
            bad("min_new_tokens", "must be >= 0")
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            bad("min_new_tokens", "must be <= max_new_tokens")
        if not 0.0 <= self.temperature <= 100.0:
            bad("temperature", "must be in [0, 100]")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must be in (0, 1]")
        if self.top_k < -1:
            bad("top_k", "must be -1, 0 (off) or a positive integer")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", "must be in [0, 1]")
        if not 0.0 < self.repetition_penalty <= 10.0:
            bad("repetition_penalty", "must be in (0, 10]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad("frequency_penalty", "must be in [-2, 2]")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad("presence_penalty", "must be in [-2, 2]")
        if not 1 <= self.n <= 128:
            bad("n", "must be in [1, 128]")
        if not 0 <= self.top_logprobs <= 20:
            bad("top_logprobs", "must be in [0, 20]")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be non-empty strings")
        if len(self.stop) > 16:
            bad("stop", "at most 16 stop strings")
        if any(t < 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must be non-negative token ids")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
            bad("seed", "must be in [-2**63, 2**64)")
        constraints = [f for f in GRAMMAR_FIELDS if getattr(self, f) is not None]
        if len(constraints) > 1:
            bad(constraints[1], f"give at most one of {', '.join(GRAMMAR_FIELDS[:-1])} and {GRAMMAR_FIELDS[-1]} "
                                f"(also got {constraints[0]})")
        return self

    def stop_ids(self, eos_token_ids: Iterable[int]) -> frozenset[int]:
        """The tokens that end a sequence: stop_token_ids, and EOS unless ignore_eos."""
        return frozenset(self.stop_token_ids) | (frozenset() if self.ignore_eos else frozenset(eos_token_ids))

    def for_sample(self, index: int, max_new_tokens: int) -> SamplingParams:
        """Sample `index` of an n-way request: n = 1, its own seed (seed + index, vLLM's
        convention, so the set is reproducible and the samples differ)."""
        seed = None if self.seed is None else (self.seed + index) % SEED_RANGE[1]
        return msgspec.structs.replace(self, n=1, seed=seed, max_new_tokens=max_new_tokens)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1
