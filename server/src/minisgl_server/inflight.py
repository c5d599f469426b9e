"""One HTTP request's engine work in flight, as functions over its Generation: `send` leases
slots on one replica (the Generation carries the lease) and submits its engine requests,
`deltas` folds their outputs into deltas through the request layer, `release` ends it.
With REQUEST_TIMEOUT, `deltas` ends a request that runs past its deadline with a TIMEOUT
error (408; streams: an error event, then [DONE]).

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
from litestar.background_tasks import BackgroundTask

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


def send(state: Any, pool: Any, gen: Generation) -> None:
    """Take inflight slots on a replica of `pool` and send the engine requests (429/503
    here, before any response starts)."""
    requests = gen.engine_requests()
    try:
        gen.lease = lease = pool.lease(requests)
    except RequestError as exc:
        if exc.kind is ErrorKind.CAPACITY:
            state.stats.requests_rejected_total += 1
        raise
    factor = adaptive_factor(lease.inflight_before, state.settings)
    if factor is not None and gen.scale_max_new_tokens(factor):
        pool.adaptive_downscaled_total += 1
        log.info("request %s: %d requests in flight, max_new_tokens scaled by %.2f (ADAPTIVE_MAX_NEW_TOKENS)",
                 gen.rid, lease.inflight_before, factor)
        requests = gen.engine_requests()
    try:
        for er in requests:
            lease.submit(er)
    except BaseException as exc:  # nothing leased may stay behind
        release(state, gen)
        if isinstance(exc, EngineUnavailable):
            raise RequestError(ErrorKind.ENGINE_DEAD, str(exc)) from None
        raise


def release(state: Any, gen: Generation) -> None:
    """Abort what is unfinished and give the slots back; safe to call twice."""
    lease = gen.lease
    if lease is None or lease.released:
        return
    unfinished = [s.rid for s in gen.unfinished() if s.rid in lease.sent]
    for rid in unfinished:
        lease.client.abort(rid, "abort")
    if unfinished:
        state.stats.record_abort()
        log.info("request %s: client gone, aborted %d engine request(s)", gen.rid, len(unfinished))
    lease.release()
    first = gen.first_token_at
    state.stats.record_request(
        latency_s=time.perf_counter() - gen.started_at, ttft_s=None if first is None else first - gen.started_at,
        completion_tokens=gen.completion_tokens, prompt_tokens=gen.prompt_tokens, cached_tokens=gen.cached_tokens,
        aborted=bool(unfinished), finish_reasons=[s.finish_reason or "abort" for s in gen.samples],
        queue_time_s=gen.queue_time_s,
    )


def release_after(state: Any, gen: Generation) -> BackgroundTask:
    """A streaming response's background task: `release` once the response is over, also
    when the client left before its body started."""
    async def release_now() -> None:  # on the event loop: a sync task would run on a thread
        release(state, gen)

    return BackgroundTask(release_now)


async def deltas(state: Any, gen: Generation) -> AsyncIterator[Delta]:
    """Deltas of all samples, interleaved as the engine produces them; exactly one per
    sample carries its finish_reason. A sample's error is raised (the rest are aborted)."""
    lease = gen.lease
    settings = state.settings
    # requests with images log at their own stride (VLM_STREAM_LOG_STRIDE)
    stride = settings.vlm_stream_log_stride if gen.samples[0].images else settings.server_stream_log_stride
    chunks = 0
    last_token_at: dict[int, float] = {}  # by sample: when its previous tokens came
    limit = settings.request_timeout
    deadline = gen.started_at + limit if limit else None
    try:
        while not gen.finished:
            delta = gen.take(await _next_output(lease.outputs, deadline, limit), lease.client.abort)
            if delta is None:
                continue
            chunks += 1
            if delta.token_ids:
                now = time.perf_counter()
                if delta.index in last_token_at:
                    state.stats.record_tokens_gap(now - last_token_at[delta.index], len(delta.token_ids))
                last_token_at[delta.index] = now
            if stride and (chunks % stride == 0 or delta.finish_reason):
                log.info("stream %s sample %d chunk %d: %r%s", gen.rid, delta.index, chunks, delta.text,
                         f" (finish: {delta.finish_reason})" if delta.finish_reason else "")
            yield delta
    finally:
        release(state, gen)


async def _next_output(outputs: asyncio.Queue[Any], deadline: float | None, limit: float) -> Any:
    if deadline is None:
        return await outputs.get()
    try:
        return await asyncio.wait_for(outputs.get(), max(0.0, deadline - time.perf_counter()))
    except asyncio.TimeoutError:
        raise RequestError(ErrorKind.TIMEOUT, f"the request did not finish within {limit:g} s (REQUEST_TIMEOUT); "
                                              "its work was stopped") from None


async def finish(request: Request[Any, Any, Any], state: Any, gen: Generation) -> bool:
    """Run a non-streaming request to its end (raising a sample's error); False when the
    client left first."""
    async def collect() -> None:
        async for _ in deltas(state, gen):
            pass

    try:
        await until_disconnect(request, collect())
    except ClientDisconnected:
        return False
    return True
