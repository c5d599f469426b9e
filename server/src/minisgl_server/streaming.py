"""Wire framing of streamed answers (SSE for the OpenAI endpoints, JSON lines for
/generate) and the non-streaming counterpart: stop when the client goes away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
from litestar import Request

from .errors import error_body

T = TypeVar("T")
_encoder = msgspec.json.Encoder()

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(payload: Any) -> bytes:
    return b"data: " + _encoder.encode(payload) + b"\n\n"


def json_line(payload: Any) -> bytes:
    return _encoder.encode(payload) + b"\n"


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The OpenAI error body of an error that happened after the 200 went out."""
    return msgspec.to_builtins(error_body(exc)[1])


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class ClientDisconnected(Exception):
    pass


async def until_disconnect(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await `work` unless the client disconnects first; then cancel it (which aborts its
    engine requests) and raise ClientDisconnected. The body has been read already, so the
    next ASGI message can only be http.disconnect."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise ClientDisconnected()
