"""The control server: a ZeroMQ ROUTER on ZMQ_CONTROL_ENDPOINT inside the process that
serves commands. Commands are looked up in the plugin registry (kind "control_command"),
so a plugin's commands work like the built-in ones. A handler is
`handler(context, **args) -> dict` (or a coroutine); whatever goes wrong in one command
becomes an error reply, never a crash of the server."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from ..plugins import PluginError, Registry
from .protocol import ControlReply, encoder, request_decoder
from .security import apply_server_curve, check_endpoint, curve_dir

log = logging.getLogger("minisgl.control")


class ControlServer:
    def __init__(self, endpoint: str, context: Any, registry: Registry, command_timeout: float = 120.0) -> None:
        check_endpoint(endpoint)
        self.endpoint = endpoint
        self.context = context
        self.registry = registry
        self.command_timeout = command_timeout
        self._zmq = zmq.asyncio.Context()
        self._auth: Any = None
        self._socket: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        socket = self._zmq.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        root = curve_dir()
        if root is not None:
            from zmq.auth.asyncio import AsyncioAuthenticator

            self._auth = AsyncioAuthenticator(self._zmq)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(root / "clients"))
            apply_server_curve(socket, root)
        socket.bind(self.endpoint)
        self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._socket = socket
        self._task = asyncio.create_task(self._serve(), name="control-server")
        log.info(
            "control plane listening on %s (%s); commands: %s",
            self.endpoint,
            "CURVE" if root is not None else "no authentication",
            ", ".join(self.registry.names("control_command")),
        )
        return self.endpoint

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._socket is not None:
            self._socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._zmq.term()

    async def _serve(self) -> None:
        assert self._socket is not None
        while True:
            frames = await self._socket.recv_multipart()
            if len(frames) < 2:
                continue
            # [identity, (empty delimiter of REQ clients), payload]
            envelope, payload = frames[:-1], frames[-1]
            # commands run concurrently: a slow `drain` must not block `metrics`
            asyncio.create_task(self._answer(envelope, payload))

    async def _answer(self, envelope: list[bytes], payload: bytes) -> None:
        reply = await self.execute_frame(payload)
        try:
            assert self._socket is not None
            await self._socket.send_multipart([*envelope, encoder.encode(reply)])
        except zmq.ZMQError as exc:
            log.warning("control reply not sent: %s", exc)

    async def execute_frame(self, payload: bytes) -> ControlReply:
        try:
            request = request_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            return ControlReply(ok=False, error=f"malformed control request: {exc}")
        return await self.execute(request.command, request.args)

    async def execute(self, command: str, args: dict[str, Any]) -> ControlReply:
        try:
            handler = self.registry.get("control_command", command).load()
        except PluginError as exc:
            return ControlReply(ok=False, error=str(exc))
        except Exception as exc:
            return ControlReply(ok=False, error=f"command {command!r} failed to load: {type(exc).__name__}: {exc}")
        try:
            result = handler(self.context, **args)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.command_timeout)
        except TypeError as exc:
            return ControlReply(ok=False, error=f"bad arguments for {command!r}: {exc}")
        except Exception as exc:
            log.warning("control command %r failed: %s", command, exc)
            return ControlReply(ok=False, error=f"{type(exc).__name__}: {exc}")
        log.info("control command %r done", command)
        return ControlReply(ok=True, result=result)
