"""A control-plane client (what `minisgl control <command>` uses)."""

from __future__ import annotations

from typing import Any

import zmq

from .protocol import ControlReply, ControlRequest, encoder, reply_decoder
from .security import apply_client_curve, curve_dir


class ControlError(RuntimeError):
    """The server answered with an error, or did not answer in time."""


class ControlClient:
    def __init__(self, endpoint: str, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx = zmq.Context()
        self._socket = self._ctx.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        root = curve_dir()
        if root is not None:
            apply_client_curve(self._socket, root)
        self._socket.connect(endpoint)

    def request(self, command: str, **args: Any) -> ControlReply:
        self._socket.send_multipart([b"", encoder.encode(ControlRequest(command=command, args=args))])
        if not self._socket.poll(int(self.timeout * 1000)):
            raise ControlError(f"no reply from {self.endpoint} within {self.timeout:g}s (is ZMQ_CONTROL=1 set on the server?)")
        frames = self._socket.recv_multipart()
        return reply_decoder.decode(frames[-1])

    def call(self, command: str, **args: Any) -> Any:
        reply = self.request(command, **args)
        if not reply.ok:
            raise ControlError(reply.error or "unknown error")
        return reply.result

    def close(self) -> None:
        self._socket.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
