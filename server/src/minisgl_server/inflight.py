"""One HTTP request's engine work in flight: a lease on one replica (its inflight slots),
its engine requests, and their outputs, folded into deltas by the request layer.

Whatever was leased is given back on every way out: the last delta, an error, a client
that leaves (the stream is closed or the task cancelled), which also aborts every
unfinished engine request and so frees its KV at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request

from minisgl.engine.messages import EngineOutput
from minisgl.frontend.errors import ErrorKind, RequestError
from minisgl.frontend.generation import Delta, Generation
from minisgl.ipc.client import EngineUnavailable

from .streaming import ClientDisconnected, until_disconnect

log = logging.getLogger("minisgl.server")


def adaptive_factor(inflight: int, settings: Any) -> float | None:
    """ADAPTIVE_MAX_NEW_TOKENS: with at least ADAPTIVE_MAX_INFLIGHT_THRESHOLD requests in
    flight, budgets shrink by ADAPTIVE_MAX_NEW_TOKENS_FACTOR. None when no cap applies."""
    if not settings.adaptive_max_new_tokens or inflight < settings.adaptive_max_inflight_threshold:
        return None
    return settings.adaptive_max_new_tokens_factor


class InflightRequest:
    def __init__(self, state: Any, gen: Generation, pool: Any) -> None:
        self.state = state
        self.gen = gen
        self.pool = pool  # the engines of the model the request was routed to
        self._queue: asyncio.Queue[EngineOutput] = asyncio.Queue()
        self._lease: Any = None
        self._sent: set[str] = set()  # engine requests this request submitted (and may abort)
        self._closed = False
        self.chunks_sent = 0
        self.aborted = False

    def start(self) -> None:
        """Take inflight slots on a replica and send the engine requests (429/503 here,
        before any response starts)."""
        gen, pool = self.gen, self.pool
        first = gen.sequences[0].prompt_ids if gen.sequences else []
        try:
            self._lease = pool.lease(len(gen.sequences), first, rid=gen.rid)
        except RequestError as exc:
            if exc.kind is ErrorKind.CAPACITY:
                self.state.stats.requests_rejected_total += 1
            raise
        factor = adaptive_factor(self._lease.inflight_before, self.state.settings)
        if factor is not None and gen.scale_max_new_tokens(factor):
            pool.adaptive_downscaled_total += 1
            log.info("request %s: %d requests in flight, max_new_tokens scaled by %.2f (ADAPTIVE_MAX_NEW_TOKENS)",
                     gen.rid, self._lease.inflight_before, factor)
        try:
            for er in gen.engine_requests():
                self._lease.client.submit(er, self._queue)
                self._sent.add(er.rid)
        except BaseException as exc:  # nothing leased may stay behind
            self.close()
            if isinstance(exc, EngineUnavailable):
                raise RequestError(ErrorKind.ENGINE_DEAD, str(exc)) from None
            raise

    def close(self) -> None:
        """Abort what is unfinished and give the slots back; safe to call twice."""
        if self._lease is None or self._closed:
            return
        self._closed = True
        unfinished = [s for s in self.gen.unfinished() if s.rid in self._sent]
        for s in unfinished:
            self._lease.client.abort(s.rid, "abort")
        if unfinished:
            self.aborted = True
            self.state.stats.record_abort()
            log.info("request %s: client gone, aborted %d engine request(s)", self.gen.rid, len(unfinished))
        self._lease.release()
        self._record()

    async def aclose(self) -> None:
        """`close`, as a response's background task."""
        self.close()

    async def deltas(self) -> AsyncIterator[Delta]:
        """Deltas of all sequences, interleaved as the engine produces them; exactly one per
        sequence carries its finish_reason. A sequence's error is raised (the rest are
        aborted)."""
        if self._lease is None:
            self.start()
        try:
            while not self.gen.finished:
                out = await self._queue.get()
                delta = self.gen.update(out)
                if delta is None:
                    continue
                if delta.error is not None:
                    raise delta.error
                if delta.stop_hit:
                    self._lease.client.abort(out.rid, "stop")
                self.chunks_sent += 1
                self._log_chunk(delta)
                yield delta
        finally:
            self.close()

    async def finish(self, request: Request[Any, Any, Any]) -> Generation | None:
        """Run a non-streaming request to its end (raising a sequence's error); None when
        the client left first."""
        async def collect() -> Generation:
            async for _ in self.deltas():
                pass
            return self.gen

        try:
            return await until_disconnect(request, collect())
        except ClientDisconnected:
            return None

    def _log_chunk(self, delta: Delta) -> None:
        settings = self.state.settings
        # requests with images log at their own stride (VLM_STREAM_LOG_STRIDE)
        stride = settings.vlm_stream_log_stride if self.gen.sequences[0].images else settings.server_stream_log_stride
        if stride and (self.chunks_sent % stride == 0 or delta.finish_reason):
            log.info("stream %s sequence %d chunk %d: %r%s", self.gen.rid, delta.index, self.chunks_sent, delta.text,
                     f" (finish: {delta.finish_reason})" if delta.finish_reason else "")

    def _record(self) -> None:
        gen = self.gen
        first = gen.first_token_at
        self.state.stats.record_request(
            latency_s=time.perf_counter() - gen.started_at, ttft_s=None if first is None else first - gen.started_at,
            completion_tokens=gen.completion_tokens, prompt_tokens=gen.prompt_tokens, cached_tokens=gen.cached_tokens,
            aborted=self.aborted,
        )
