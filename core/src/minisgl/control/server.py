"""The control server: a ZeroMQ ROUTER on ZMQ_CONTROL_ENDPOINT inside the process that
serves commands. Commands are looked up in the plugin registry (kind "control_command"),
so a plugin's commands work like the built-in ones. A handler is
`handler(context, **args) -> dict` (or a coroutine).

Every frame gets exactly one reply, whatever it holds: a payload that does not decode
(garbage, nesting deeper than the decoder goes), an unknown command, arguments the
handler does not take or of the wrong type or range (checked against the handler's
annotations, `Annotated[float, msgspec.Meta(ge=0)]` included, before it runs; the reply
names the argument), or a handler that fails: all become error replies, never a crash
or a silence."""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from ..plugins import PluginError, Registry
from .protocol import ControlReply, encoder, request_decoder
from .security import apply_server_curve, check_endpoint, curve_dir

log = logging.getLogger("minisgl.control")

MAX_FRAME_BYTES = 16 * 1024 * 1024  # a control request is small; a larger one is refused undecoded


class ArgumentError(ValueError):
    """A command's argument is missing, unknown, or of the wrong type or range."""


def check_arguments(command: str, handler: Any, args: dict[str, Any]) -> dict[str, Any]:
    """`args` converted to what `handler(context, **args)` declares: every argument it does
    not take, every required one missing and every value of the wrong type or out of range
    raises ArgumentError naming the argument. Unannotated parameters take any value."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # a builtin or a C callable: nothing to check against
        return args
    params = list(signature.parameters.values())[1:]  # the first one is the context
    try:
        hints = typing.get_type_hints(handler, include_extras=True)
    except Exception:
        hints = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = {p.name: p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    unknown = [name for name in args if name not in named]
    if unknown and not takes_any:
        takes = ", ".join(named) or "no arguments"
        raise ArgumentError(f"bad arguments for {command!r}: unknown argument {unknown[0]!r} (it takes: {takes})")
    checked = dict(args)
    for name, param in named.items():
        if name not in args:
            if param.default is inspect.Parameter.empty:
                raise ArgumentError(f"bad arguments for {command!r}: missing required argument {name!r}")
            continue
        hint = hints.get(name)
        if hint is None or hint is Any:
            continue
        try:
            checked[name] = msgspec.convert(args[name], hint, strict=True)
        except msgspec.ValidationError as exc:
            raise ArgumentError(f"bad argument {name!r} for {command!r}: {exc}") from None
        except Exception as exc:  # an annotation msgspec cannot check: leave the value as it is
            log.debug("control command %r: argument %r not checked (%s)", command, name, exc)
    return checked


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
        self._answering: set[asyncio.Task[None]] = set()  # strong references until each reply is sent

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
        for task in list(self._answering):
            task.cancel()
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
            # [identity, (empty delimiter of REQ clients), payload]; a ROUTER always puts the
            # identity first, so even a lone frame has somewhere to be answered
            envelope, payload = (frames[:-1], frames[-1]) if len(frames) >= 2 else (frames, b"")
            # commands run concurrently: a slow `drain` must not block `metrics`
            task = asyncio.create_task(self._answer(envelope, payload))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _answer(self, envelope: list[bytes], payload: bytes) -> None:
        try:
            reply = await self.execute_frame(payload)
        except Exception as exc:  # never leave a frame unanswered
            log.exception("control frame failed")
            reply = ControlReply(ok=False, error=f"{type(exc).__name__}: {exc}")
        await self._send(envelope, reply)

    async def _send(self, envelope: list[bytes], reply: ControlReply) -> None:
        try:
            data = encoder.encode(reply)
        except Exception as exc:  # a result that does not encode: say so instead
            log.warning("control reply does not encode: %s", exc)
            data = encoder.encode(ControlReply(ok=False, error=f"the result could not be encoded: {type(exc).__name__}: {exc}"))
        try:
            assert self._socket is not None
            await self._socket.send_multipart([*envelope, data])
        except (zmq.ZMQError, AssertionError) as exc:
            log.warning("control reply not sent: %s", exc)

    async def execute_frame(self, payload: bytes) -> ControlReply:
        if len(payload) > MAX_FRAME_BYTES:
            return ControlReply(ok=False, error=f"malformed control request: {len(payload)} bytes (at most {MAX_FRAME_BYTES})")
        try:
            request = request_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            return ControlReply(ok=False, error=f"malformed control request: {exc}")
        except RecursionError:
            return ControlReply(ok=False, error="malformed control request: nested too deeply")
        return await self.execute(request.command, request.args)

    async def execute(self, command: str, args: dict[str, Any]) -> ControlReply:
        try:
            handler = self.registry.get("control_command", command).load()
        except PluginError as exc:
            return ControlReply(ok=False, error=str(exc))
        except Exception as exc:
            return ControlReply(ok=False, error=f"command {command!r} failed to load: {type(exc).__name__}: {exc}")
        try:
            args = check_arguments(command, handler, args)
        except ArgumentError as exc:
            return ControlReply(ok=False, error=str(exc))
        # a command that waits on purpose (drain's timeout) may take that long, and a little more
        wait = self.command_timeout
        if isinstance(args.get("timeout"), int | float) and not isinstance(args.get("timeout"), bool):
            wait = max(wait, float(args["timeout"]) + 5.0)
        try:
            result = handler(self.context, **args)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, wait)
        except TypeError as exc:
            return ControlReply(ok=False, error=f"bad arguments for {command!r}: {exc}")
        except asyncio.TimeoutError:
            log.warning("control command %r did not finish within %.0fs", command, wait)
            return ControlReply(ok=False, error=f"TimeoutError: command {command!r} did not finish within {wait:.0f}s")
        except Exception as exc:
            log.warning("control command %r failed: %s", command, exc)
            return ControlReply(ok=False, error=f"{type(exc).__name__}: {exc}")
        log.info("control command %r done", command)
        return ControlReply(ok=True, result=result)
