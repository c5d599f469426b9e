"""One HTTP request's generation: its engine requests (n choices, or one per prompt of a
batch) on one replica, turned into text deltas.

Detokenizing and stop strings happen here, in the server process. When a stop string
matches, the text is cut there and the engine request is aborted with reason "stop".
Leaving the stream early (client gone, cancelled task) aborts every unfinished engine
request, which frees its KV at once."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from minisgl.engine.messages import EngineOutput, EngineRequest
from minisgl.ipc.client import EngineUnavailable
from minisgl.sampling_params import SamplingParams

from .errors import APIError

log = logging.getLogger("minisgl.server")


@dataclass
class ChoiceSpec:
    index: int
    input_ids: list[int]
    sampling: SamplingParams


@dataclass
class TokenLogprobInfo:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class ChoiceDelta:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobInfo] | None = None
    finish_reason: str | None = None  # set on the choice's last delta
    error: str | None = None


@dataclass
class _Choice:
    spec: ChoiceSpec
    rid: str
    detok: Any
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finished: bool = False
    finish_reason: str | None = None
    first_token_at: float | None = None


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Generation:
    def __init__(self, state: Any, request_id: str, choices: list[ChoiceSpec], *, skip_special_tokens: bool = True) -> None:
        self.state = state
        self.request_id = request_id
        self._queue: asyncio.Queue[EngineOutput] = asyncio.Queue()
        tok = state.tokenizer
        self.choices = [
            _Choice(
                spec=c,
                rid=f"{request_id}-{c.index}",
                detok=tok.detokenizer(skip_special_tokens=c.sampling.skip_special_tokens, stop=c.sampling.stop),
            )
            for c in choices
        ]
        self._by_rid = {c.rid: c for c in self.choices}
        self.started_at = time.perf_counter()
        self.chunks_sent = 0
        self.aborted = False
        self._lease: Any = None
        self._client: Any = None
        self._closed = False

    # ---- usage -------------------------------------------------------------------------
    @property
    def prompt_tokens(self) -> int:
        # n choices of one prompt share it: count each distinct prompt once (OpenAI's usage)
        seen: dict[int, int] = {}
        for c in self.choices:
            seen.setdefault(id(c.spec.input_ids), c.prompt_tokens or len(c.spec.input_ids))
        return sum(seen.values())

    @property
    def cached_tokens(self) -> int:
        return sum(c.cached_tokens for c in self.choices)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    # ---- the stream ----------------------------------------------------------------------
    def start(self) -> None:
        """Take inflight slots on a replica (429/503 here, before any response starts) and
        send the engine requests."""
        first = self.choices[0].spec.input_ids if self.choices else []
        try:
            self._lease = self.state.pool.lease(len(self.choices), first, rid=self.request_id)
        except APIError as exc:
            if exc.status == 429:
                self.state.stats.requests_rejected_total += 1
            raise
        self._client = self._lease.client
        self._adapt_max_new_tokens()
        try:
            for c in self.choices:
                self._client.submit(
                    EngineRequest(rid=c.rid, input_ids=c.spec.input_ids, sampling=c.spec.sampling, arrival_time=time.time()),
                    self._queue,
                )
        except EngineUnavailable as exc:
            self.close()
            raise APIError(503, str(exc), code="engine_unavailable") from None

    def _adapt_max_new_tokens(self) -> None:
        """ADAPTIVE_MAX_NEW_TOKENS: the pool may shorten each choice's budget under load."""
        pool = self.state.pool
        for c in self.choices:
            budget = c.spec.sampling.max_new_tokens or self.state.settings.max_new_tokens_default
            scaled = pool.adapt_max_new_tokens(self._lease, budget)
            if scaled != budget:
                log.info("request %s: %d requests in flight, max_new_tokens %d -> %d (ADAPTIVE_MAX_NEW_TOKENS)",
                         self.request_id, self._lease.inflight_before, budget, scaled)
                sampling = msgspec.structs.replace(c.spec.sampling, max_new_tokens=scaled)
                if sampling.min_new_tokens > scaled:
                    sampling = msgspec.structs.replace(sampling, min_new_tokens=scaled)
                c.spec = ChoiceSpec(index=c.spec.index, input_ids=c.spec.input_ids, sampling=sampling)

    def close(self) -> None:
        """Abort what is unfinished and give the slots back; safe to call twice."""
        if self._lease is None or self._closed:
            return
        self._closed = True
        unfinished = [c for c in self.choices if not c.finished]
        for c in unfinished:
            self._client.abort(c.rid, "abort")
        if unfinished:
            self.aborted = True
            self.state.stats.record_abort()
            log.info("request %s: client gone, aborted %d engine request(s)", self.request_id, len(unfinished))
        self._lease.release()
        self._record()

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        """Text deltas of all choices, interleaved as the engine produces them. Exactly one
        delta per choice carries its finish_reason."""
        if self._lease is None:
            self.start()
        try:
            remaining = sum(not c.finished for c in self.choices)
            while remaining:
                out = await self._queue.get()
                choice = self._by_rid.get(out.rid)
                if choice is None or choice.finished:
                    continue
                delta = self._apply(choice, out, self._client)
                if choice.finished:
                    remaining -= 1
                if delta is not None:
                    self.chunks_sent += 1
                    self._log_chunk(delta)
                    yield delta
        finally:
            self.close()

    def _apply(self, choice: _Choice, out: EngineOutput, client: Any) -> ChoiceDelta | None:
        if out.prompt_tokens:
            choice.prompt_tokens = out.prompt_tokens
        choice.cached_tokens = max(choice.cached_tokens, out.cached_tokens)
        if out.finish_reason == "error":
            choice.finished = True
            choice.finish_reason = "error"
            return ChoiceDelta(index=choice.spec.index, finish_reason="error", error=out.error or "engine error")
        ids = list(out.new_token_ids)
        text, stop_hit = choice.detok.push(ids) if ids else ("", False)
        if ids:
            if choice.first_token_at is None:
                choice.first_token_at = time.perf_counter()
            choice.completion_tokens += len(ids)
        delta = ChoiceDelta(index=choice.spec.index, text=text, token_ids=ids)
        if out.logprobs is not None:
            tops = out.top_logprobs or [[] for _ in ids]
            delta.logprobs = [TokenLogprobInfo(t, lp, list(top)) for t, lp, top in zip(ids, out.logprobs, tops, strict=False)]
        if stop_hit:
            client.abort(choice.rid, "stop")
            choice.finished = True
            choice.finish_reason = "stop"
        elif out.finished:
            delta.text += choice.detok.finish()
            choice.finished = True
            choice.finish_reason = out.finish_reason or "stop"
        delta.finish_reason = choice.finish_reason if choice.finished else None
        if not delta.text and not delta.finish_reason and not delta.logprobs:
            return None
        return delta

    def _log_chunk(self, delta: ChoiceDelta) -> None:
        stride = self.state.settings.server_stream_log_stride
        if stride and (self.chunks_sent % stride == 0 or delta.finish_reason):
            log.info("stream %s choice %d chunk %d: %r%s", self.request_id, delta.index, self.chunks_sent,
                     delta.text, f" (finish: {delta.finish_reason})" if delta.finish_reason else "")

    def _record(self) -> None:
        elapsed = time.perf_counter() - self.started_at
        firsts = [c.first_token_at for c in self.choices if c.first_token_at is not None]
        ttft = (min(firsts) - self.started_at) if firsts else None
        self.state.stats.record_request(
            latency_s=elapsed, ttft_s=ttft, completion_tokens=self.completion_tokens,
            prompt_tokens=self.prompt_tokens, cached_tokens=self.cached_tokens, aborted=self.aborted,
        )

    async def collect(self) -> list[ChoiceDelta]:
        """Run to the end; one merged delta per choice (text, ids, logprobs, finish)."""
        merged = {c.spec.index: ChoiceDelta(index=c.spec.index, logprobs=None) for c in self.choices}
        async for d in self.deltas():
            m = merged[d.index]
            m.text += d.text
            m.token_ids.extend(d.token_ids)
            if d.logprobs is not None:
                m.logprobs = (m.logprobs or []) + d.logprobs
            if d.finish_reason:
                m.finish_reason = d.finish_reason
                m.error = d.error
        return [merged[i] for i in sorted(merged)]
