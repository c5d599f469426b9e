"""One request inside the engine: its tokens, its sampling parameters and the KV it holds.

Queue policies (`--queue-policy` plugins) read waiting requests through `rid`,
`token_ids`, `priority`, `arrival_time`, `seq` and `retracted`, and never change them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..sampling_params import SamplingParams
from .messages import ImageInput


@dataclass
class Req:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int  # already capped to the context and the pool
    stop_ids: frozenset[int]  # EOS (unless ignore_eos) and stop_token_ids
    priority: int = 0
    arrival_time: float = 0.0
    seq: int = 0
    warm_only: bool = False  # a warm() prefill: fills the cache, emits nothing
    warm_tokens: int = 0  # tokens this warm request added to the prefix cache
    images: list[ImageInput] = field(default_factory=list)  # kept to the end: a retraction recomputes them
    pooling: str | None = None  # "last" | "mean": prefill only, answered with its pooled hidden states
    pooled: Any = None  # a pooling request's sum of hidden states so far (host float32 [H])
    # tokens: prompt + generated; the last generated one has no KV yet while decoding
    all_ids: list[int] = field(default_factory=list)
    num_output: int = 0
    # tokens sampled by launched steps whose results are not processed yet (overlap
    # scheduling: at most 2 between launching step N+1 and processing step N)
    inflight: int = 0
    future_row: int = -1  # this request's row in the last launched step's next_tokens
    # KV held while running: positions [0, cached_len) are the locked cache prefix, the
    # rest are private pages; `slots` maps every allocated position to its slot
    row: int = -1  # row of the page table
    slots: list[int] = field(default_factory=list)
    private_pages: list[int] = field(default_factory=list)
    cache_handle: Any = None
    cached_len: int = 0
    kv_len: int = 0  # positions whose K/V is in the pool
    prompt_cached_tokens: int = -1  # cache hit of the first admission (reported to the user)
    queue_time_s: float = 0.0  # from arrival to the first admission (reported with the first output)
    num_retractions: int = 0
    finished_reason: str | None = None
    # sampling row, fixed for the request's life
    temperature: float = 1.0
    seed: int = -1
    grammar: Any = None  # a minisgl.grammar.GrammarMatcher: structured outputs
    grammar_fed: int = 0  # output tokens the matcher has been given (see Scheduler._feed_grammars)
    # the matcher's state after the last of them (the engine thread never reads the matcher,
    # which the mask worker may be filling from): complete, and why it refused the token ("" if not)
    grammar_done: bool = False
    grammar_error: str = ""
    # speculative decoding: this step's drafted tokens, and how well recent drafts did
    draft: list[int] = field(default_factory=list)
    # decayed counts of accepted drafts and of rejections (a draft cut short): the chance that
    # a draft token is accepted given the one before it was, hits / (hits + misses)
    spec_hits: float = 1.0
    spec_misses: float = 1.0
    spec_pause: int = 0  # steps left without drafts after drafting stopped paying for it
    spec_probe: bool = True  # draft at least one token at the next chance (first decode, end of a pause)

    def __post_init__(self) -> None:
        if not self.all_ids:
            self.all_ids = list(self.prompt_ids)
        p = self.params
        self.temperature = 0.0 if p.greedy else float(p.temperature)
        self.seed = -1 if p.seed is None else int(p.seed) & ((1 << 63) - 1)

    @property
    def output_ids(self) -> list[int]:
        return self.all_ids[len(self.prompt_ids) :]

    @property
    def pending(self) -> int:
        """Tokens still to run through the model before the next sample (an in-flight
        token counts: overlap scheduling feeds it to the model before its value is known)."""
        return len(self.all_ids) + self.inflight - self.kv_len

    @property
    def computed_ids(self) -> int:
        """Leading tokens whose K/V is in the pool and whose ids are known."""
        return min(self.kv_len, len(self.all_ids))

    @property
    def needs_penalties(self) -> bool:
        p = self.params
        return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0

    @property
    def token_ids(self) -> list[int]:
        """What must be in the KV before decoding: the prompt and any output kept over a retraction."""
        return self.all_ids

    @property
    def retracted(self) -> bool:
        """Preempted earlier; it keeps its place by arrival."""
        return self.num_retractions > 0
