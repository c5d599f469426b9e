"""uvicorn's h11 protocol with a deadline for request headers.

uvicorn has no header-read timeout: its keep-alive timer only runs between requests and
is cancelled by the first byte of the next one, so a client that opens a connection and
never finishes its headers (slowloris) holds it forever. Here a connection has
HTTP_HEADER_TIMEOUT seconds from when it opens (and, on a kept-alive connection, from the
first byte of each next request) to finish a request's headers, however slowly it trickles
them; then it is closed. An idle kept-alive connection is closed by uvicorn's keep-alive
timeout as before. Once the
headers are in, the request runs as long as it needs (a long generation is not cut).

`main.py` passes `header_timeout_protocol(seconds)` as uvicorn.Config(http=...)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("minisgl.server")


class HeaderTimeoutH11Protocol(H11Protocol):
    header_timeout: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms the keep-alive timer while idle
        self._follow_request_state()

    # the deadline runs while the client owes us a request's headers
    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _follow_request_state(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self._disarm_header_deadline()
        elif self._waiting_for_headers():
            if self._header_deadline is None and self.conn.trailing_data[0]:
                self._arm_header_deadline()  # part of the next request is in: its clock starts now
        else:
            self._disarm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._header_timeout_expired)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_timeout_expired(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or not self._waiting_for_headers():
            return
        log.debug("closing a connection from %s: no complete request headers within %.1fs", self.client,
                  self.header_timeout)
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with its deadline set."""
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout": float(seconds)})
