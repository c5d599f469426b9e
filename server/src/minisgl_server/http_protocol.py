"""uvicorn's h11 protocol with deadlines for request headers and request bodies.

uvicorn has no header-read timeout: its keep-alive timer only runs between requests and
is cancelled by the first byte of the next one, so a client that opens a connection and
never finishes its headers (slowloris) holds it forever. Here a connection has
HTTP_HEADER_TIMEOUT seconds from when it opens (and, on a kept-alive connection, from the
first byte of each next request) to finish a request's headers, however slowly it trickles
them; then it is closed. An idle kept-alive connection is closed by uvicorn's keep-alive
timeout as before.

Once the headers are in, the body has HTTP_BODY_TIMEOUT seconds to arrive in full (a body
that never finishes would hold the connection and its handler forever): then the client
gets 408 with the OpenAI error body, the connection is closed, and the handler sees a
disconnect. Time the server itself keeps the body waiting (reading paused) is not the
client's. Once the body is in, the request runs as long as it needs (a long generation is
not cut).

`main.py` passes `timed_protocol(header_seconds, body_seconds)` as uvicorn.Config(http=...)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("minisgl.server")


class TimedH11Protocol(H11Protocol):
    header_timeout: float = 5.0
    body_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        self._disarm_body_deadline()
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
        self._follow_body_state()
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


    # the body deadline runs from the end of the headers while the client owes us body bytes
    def _follow_body_state(self) -> None:
        if self.transport is None or self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            self._disarm_body_deadline()
        elif self._body_deadline is None:
            self._body_deadline = self.loop.call_later(self.body_timeout, self._body_timeout_expired)

    def _disarm_body_deadline(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _body_timeout_expired(self) -> None:
        self._body_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        if self.flow.read_paused:  # the server is not reading yet: the wait is ours
            self._follow_body_state()
            return
        log.info("closing a connection from %s: the request body did not arrive within %.1fs", self.client,
                 self.body_timeout)
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and self.conn.our_state is h11.SEND_RESPONSE:
            message = f"the request body did not arrive within {self.body_timeout:g} s (HTTP_BODY_TIMEOUT)"
            body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                         "code": "request_timeout"}}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        if cycle is not None:  # the handler's receive() answers http.disconnect; its response goes nowhere
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def timed_protocol(header_seconds: float, body_seconds: float) -> type[TimedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with its deadlines set."""
    return type("TimedH11Protocol", (TimedH11Protocol,),
                {"header_timeout": float(header_seconds), "body_timeout": float(body_seconds)})
