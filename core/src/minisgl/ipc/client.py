"""The server's side of one engine replica: starts the engine on its host (a local process,
or a Ray actor: engine_host.py), sends frames, and routes each step's outputs to the queue
of the request they belong to.

Engine death (crash, kill, failed start) is noticed by the host (the process sentinel, the
actor's task): every in-flight request then receives an error output at once and new work
is refused, so no caller ever hangs on a dead engine.

A stuck engine (alive, but its loop does not turn: a hung kernel, a deadlocked collective,
a stopped process) is noticed by the watchdog: once ready, an engine that has work (requests
or calls waiting on it) and has sent no frame for `watchdog_timeout` seconds is killed
(SIGKILL) and declared dead like any other, so its requests end and the pool restarts it.
The engine sends a Heartbeat whenever it has sent nothing for a second, so silence means
that no step has finished."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq
import zmq.asyncio

from ..control.security import secure_server
from ..engine.messages import AbortRequest, EngineOutput, EngineRequest
from ..frontend.errors import ErrorKind, RequestError
from ..settings import Settings
from .endpoints import ReplicaEndpoints
from .engine_host import EngineHost, HostFactory, LocalProcess
from .protocol import EngineCall, EngineFatal, EngineReady, EngineReply, FrameCodec, Heartbeat, Shutdown, StepOutputs

log = logging.getLogger("minisgl.ipc")


class EngineUnavailable(RuntimeError):
    """The replica is not running (still starting, dead, or stopped)."""


class EngineClient:
    def __init__(
        self,
        settings: Settings,
        replica: int,
        endpoints: ReplicaEndpoints,
        ctx: zmq.asyncio.Context,
        on_death: Callable[[EngineClient], None] | None = None,
        env: Mapping[str, str] | None = None,
        host: HostFactory = LocalProcess,
        curve_server_keys: tuple[bytes, bytes] | None = None,
        watchdog_timeout: float = 0.0,
    ) -> None:
        self.settings = settings
        self.replica = replica
        self.ctx = ctx
        self.codec = FrameCodec()
        self.on_death = on_death
        self.state = "created"  # created | starting | ready | dead | stopped
        self.error: str | None = None
        self.ready_info: EngineReady | None = None
        # Sends are plain non-blocking calls on a synchronous socket with no high-water
        # mark, so an abort can be sent from any `finally`, even in a cancelled task.
        self._requests = zmq.Context.instance().socket(zmq.PUSH)
        self._requests.setsockopt(zmq.SNDHWM, 0)
        self._outputs = ctx.socket(zmq.PULL)
        self._requests.setsockopt(zmq.LINGER, 0)
        self._outputs.setsockopt(zmq.LINGER, 0)
        if curve_server_keys is not None:  # engines must hold the keys of endpoints.curve (ZAP checks theirs)
            for socket in (self._requests, self._outputs):
                secure_server(socket, curve_server_keys)
        self._requests.bind(endpoints.requests)
        self._outputs.bind(endpoints.outputs)
        self.endpoints = ReplicaEndpoints(
            requests=self._requests.getsockopt_string(zmq.LAST_ENDPOINT),
            outputs=self._outputs.getsockopt_string(zmq.LAST_ENDPOINT),
            curve=endpoints.curve,
        )
        # extra environment for the engine only (CUDA_VISIBLE_DEVICES: its GPU)
        self.host: EngineHost = host(settings, replica, self.endpoints, dict(env or {}))
        self._started = False
        self._routes: dict[str, asyncio.Queue[EngineOutput]] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count()
        self._ready: asyncio.Future[EngineReady] | None = None
        self._recv_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.watchdog_timeout = watchdog_timeout  # seconds without a frame while it has work; 0: off
        self.steps = 0  # engine steps finished, as its last Heartbeat said
        self._last_frame = time.monotonic()  # when the engine last showed its loop turning
        self._watchdog_task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> EngineReady:
        """Start the engine and wait for its "ready" (model loaded and warmed)."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self.state = "starting"
        self.host.start(self._on_host_exit)
        self._started = True
        pid = self.host.pid  # a Ray actor's is known once Ray has placed it
        log.info("engine replica %d: started on %s%s, loading %s", self.replica, self.host.node,
                 f" (process {pid})" if pid else "", self.settings.model_path)
        self._recv_task = asyncio.create_task(self._receive_loop(), name=f"engine-{self.replica}-recv")
        if self.host.remote:
            self._watch_task = asyncio.create_task(self._watch_connection(), name=f"engine-{self.replica}-watch")
        info = await self._ready
        self.ready_info = info
        self.state = "ready"
        if self.watchdog_timeout > 0:
            self._watchdog_task = asyncio.create_task(self._watchdog(), name=f"engine-{self.replica}-watchdog")
        return info

    @property
    def pid(self) -> int | None:
        return self.ready_info.pid if self.ready_info is not None else self.host.pid

    @property
    def alive(self) -> bool:
        return self.state == "ready"

    @property
    def inflight(self) -> int:
        return len(self._routes)

    async def stop(self, timeout: float = 10.0) -> None:
        if not self._started or self.state in ("stopped",):
            return
        was_alive = self.host.is_alive()
        loading = self.state in ("created", "starting")  # reads no Shutdown frame before it is loaded
        connected = self.state != "dead"  # a remote engine can be lost while its host still runs
        self.state = "stopped"
        if was_alive and loading:
            self.host.terminate()
        elif was_alive:
            if connected:
                self._send(Shutdown())
            for _ in range(int(timeout * 10)):
                if not self.host.is_alive():
                    break
                await asyncio.sleep(0.1)
            if self.host.is_alive():
                self.host.terminate()
        self._detach()
        self._fail_everything("engine stopped")
        self._requests.close(linger=0)
        self._outputs.close(linger=0)

    def _detach(self) -> None:
        self.host.detach()
        for task in (self._recv_task, self._watch_task, self._watchdog_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    async def _watch_connection(self) -> None:
        """A ready engine whose outputs connection closes is dead (a killed process closes
        its sockets at once; its host may take seconds to say so)."""
        monitor = self._outputs.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            while True:
                await monitor.recv_multipart()
                if self.state == "ready":
                    self._die(f"lost the connection to engine replica {self.replica} on {self.host.node} "
                              f"(process {self.pid})")
                    return
        finally:
            if not self._outputs.closed:
                self._outputs.disable_monitor()
            monitor.close(linger=0)

    @property
    def has_work(self) -> bool:
        """Requests or calls wait on the engine (the ones it must answer to make progress)."""
        return bool(self._routes or self._calls)

    def _note_work(self) -> None:
        """Work arrives: an engine that was idle (and quiet) is timed from now."""
        if not self.has_work:
            self._last_frame = time.monotonic()

    async def _watchdog(self) -> None:
        timeout = self.watchdog_timeout
        while self.state == "ready":
            await asyncio.sleep(min(1.0, timeout / 4))
            silent = time.monotonic() - self._last_frame
            if self.state == "ready" and self.has_work and silent > timeout:
                error = (f"engine replica {self.replica} (process {self.pid}) is stuck: no step finished in "
                         f"{silent:.1f}s with requests waiting (--watchdog-timeout {timeout:g}); it was killed")
                self.host.kill()
                self._die(error)
                return

    def _on_host_exit(self, why: str) -> None:
        if self.state != "stopped":
            self._read_last_frames()
        self._detach()
        if self.state == "stopped":
            return
        self._die(self.error or why)

    def _read_last_frames(self) -> None:
        """Frames the engine sent before it exited that the receive loop has not read yet:
        its EngineFatal says why it failed, which beats "exited with code 1"."""
        if self._outputs.closed:
            return
        outputs = zmq.Socket.shadow(self._outputs.underlying)
        while True:
            try:
                frame = outputs.recv(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            self._on_frame(frame)

    def _die(self, error: str) -> None:
        if self.state in ("dead", "stopped"):
            return
        self.state = "dead"
        self.error = error
        log.error("engine replica %d is down: %s", self.replica, error)
        self._fail_everything(error)
        if self.on_death is not None:
            self.on_death(self)

    def _fail_everything(self, error: str) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EngineUnavailable(error))
        self.fail_inflight(error, ErrorKind.ENGINE_DEAD)  # dead or stopped: nothing to abort there
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(EngineUnavailable(error))
        self._calls.clear()

    # ---- the data plane ----------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            self._on_frame(await self._outputs.recv())

    def _on_frame(self, frame: bytes) -> None:
        self._last_frame = time.monotonic()
        try:
            msg = self.codec.decode_from_engine(frame)
        except Exception as exc:
            log.error("engine replica %d sent an undecodable frame: %s", self.replica, exc)
            return
        if isinstance(msg, StepOutputs):
            for out in msg.outputs:
                queue = self._routes.get(out.rid)
                if queue is None:
                    continue  # aborted by the frontend; late outputs are dropped
                if out.finished:
                    del self._routes[out.rid]
                queue.put_nowait(out)
        elif isinstance(msg, EngineReply):
            fut = self._calls.pop(msg.call_id, None)
            if fut is not None and not fut.done():
                if msg.error is not None:
                    fut.set_exception(RuntimeError(msg.error))
                else:
                    fut.set_result(msg.result)
        elif isinstance(msg, EngineReady):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(msg)
        elif isinstance(msg, Heartbeat):
            self.steps = msg.steps
        elif isinstance(msg, EngineFatal):
            self.error = msg.error  # the sentinel fires next; report this cause

    def _check_alive(self) -> None:
        if self.state != "ready":
            raise EngineUnavailable(self.error or f"engine replica {self.replica} is {self.state}")

    def _send(self, msg: Any) -> bool:
        try:
            self._requests.send(self.codec.encode(msg), zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # no engine connected (it died): the sentinel reports it
            log.warning("engine replica %d: frame not sent: %s", self.replica, exc)
            return False

    def submit(self, request: EngineRequest, queue: asyncio.Queue[EngineOutput]) -> None:
        """Send a request; its outputs (the last with finished=True) arrive on `queue`."""
        self._check_alive()
        if request.rid in self._routes:  # another request's stream must never be taken over
            raise RequestError(ErrorKind.INVALID_REQUEST, f"request id {request.rid!r} is already in use", "rid")
        self._note_work()
        self._routes[request.rid] = queue
        if not self._send(request):
            del self._routes[request.rid]
            raise EngineUnavailable(f"engine replica {self.replica} is not reachable")

    def fail_inflight(self, error: str, kind: ErrorKind) -> int:
        """End every in-flight request now: the engine aborts it (freeing its KV) and its
        caller gets a last output with finish_reason "error" and `kind`. Returns how many."""
        routes = list(self._routes.items())
        self._routes.clear()
        for rid, queue in routes:
            if self.state == "ready":
                self._send(AbortRequest(rid=rid, reason="abort"))
            queue.put_nowait(EngineOutput(rid=rid, finished=True, finish_reason="error", error=error,
                                          error_kind=kind.value))
        return len(routes)

    def abort(self, rid: str, reason: str = "abort") -> None:
        """Stop a request and free its KV. Later outputs for it are dropped."""
        if self._routes.pop(rid, None) is None:
            return  # already finished (or never sent): nothing is held for it
        if self.state == "ready":
            self._send(AbortRequest(rid=rid, reason=reason))

    async def call(self, method: str, timeout: float = 30.0, **args: Any) -> Any:
        """Call one of the engine's synchronous methods (protocol.CALLABLE_METHODS)."""
        self._check_alive()
        call_id = next(self._call_ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._note_work()
        self._calls[call_id] = fut
        if not self._send(EngineCall(call_id=call_id, method=method, args=args)):
            self._calls.pop(call_id, None)
            raise EngineUnavailable(f"engine replica {self.replica} is not reachable")
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._calls.pop(call_id, None)
