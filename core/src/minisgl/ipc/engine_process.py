"""The engine process: load the model, warm up, say "ready", then loop.

The loop owns one Engine. It drains request/abort/call frames (without blocking while the
engine has work, blocking while idle), runs one engine step, and sends that step's outputs
as one frame. It never waits on the HTTP side: sends are to a local PUSH socket.

The server owns the engine's lifetime: the engine ignores SIGINT (a Ctrl-C in a terminal
reaches the whole process group, and the server drains before it stops its engines), stops
on a Shutdown frame, and exits by itself when the server process is gone, removing the
server's ipc temp dir that nobody else is left to remove."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from typing import Any

import zmq

from ..control.security import secure_client
from ..engine.messages import AbortRequest, EngineOutput, EngineRequest
from ..frontend.errors import ErrorKind
from ..sampling_params import SamplingParams
from ..settings import Settings
from .endpoints import ReplicaEndpoints, remove_orphaned_dir
from .faults import Faults
from .protocol import (
    CALLABLE_METHODS,
    EngineCall,
    EngineFatal,
    EngineReady,
    EngineReply,
    FrameCodec,
    Heartbeat,
    Shutdown,
    StepOutputs,
)

log = logging.getLogger("minisgl.engine_process")

# engine calls that run across steps: the method the loop calls instead, which returns an
# engine.warming.PendingCall (warm: its prefills are scheduled behind user requests, see Scheduler)
DEFERRED_METHODS = {"warm": "warm_async"}
IDLE_POLL_MS = 500  # while idle, wake this often to notice a dead parent
HEARTBEAT_S = 1.0  # send a Heartbeat when nothing else was sent for this long (the server's watchdog reads it)
WARMUP_RID = "__warmup__"


def warm_up(engine: Any) -> None:
    """One short greedy request through prefill and decode, so the first user request does
    not pay for lazy initialisation; then drop what it cached."""
    engine.add_request(EngineRequest(
        rid=WARMUP_RID,
        input_ids=[engine.eos_token_ids[0] if engine.eos_token_ids else 0] * 4,
        sampling=SamplingParams(max_new_tokens=2, temperature=0.0, ignore_eos=True),
    ))
    deadline = time.monotonic() + 600
    while engine.has_work():
        for out in engine.step():
            if out.rid == WARMUP_RID and out.finish_reason == "error":
                raise RuntimeError(f"warm-up request failed: {out.error}")
        if time.monotonic() > deadline:
            raise RuntimeError("warm-up request did not finish within 600 s")
    engine.flush_cache()


def _device_name(device: Any) -> str:
    """"cuda:0" rather than "cuda": the GPU this process computes on."""
    try:
        import torch

        resolved = torch.device(device)
        if resolved.type == "cuda" and resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        return str(resolved)
    except (RuntimeError, TypeError, ValueError):  # a backend's own device object (MLX)
        return str(device)


class EngineLoop:
    def __init__(self, engine: Any, requests: zmq.Socket, outputs: zmq.Socket) -> None:
        self.engine = engine
        self.requests = requests
        self.outputs = outputs
        self.codec = FrameCodec()
        self.poller = zmq.Poller()
        self.poller.register(requests, zmq.POLLIN)
        self.running = True
        self.orphaned = False  # the server process died under us
        self.steps = 0
        self.last_sent = time.monotonic()

    def run(self) -> None:
        parent = multiprocessing.parent_process()
        while self.running:
            timeout = 0 if self.engine.has_work() else IDLE_POLL_MS
            if self.poller.poll(timeout):
                self._drain()
            if parent is not None and not parent.is_alive():
                log.warning("server process is gone; engine process exits")
                self.orphaned = True
                return
            if self.running and self.engine.has_work():
                outs = self.engine.step()
                self.steps += 1
                if outs:
                    self._send(StepOutputs(outputs=outs))
            if time.monotonic() - self.last_sent >= HEARTBEAT_S:
                self._send(Heartbeat(steps=self.steps))

    def _send(self, msg: Any) -> None:
        self.outputs.send(self.codec.encode(msg))
        self.last_sent = time.monotonic()

    def _drain(self) -> None:
        while True:
            try:
                frame = self.requests.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = self.codec.decode_to_engine(frame)
            except Exception as exc:  # a bad frame is the sender's bug; never our crash
                log.error("dropping undecodable frame: %s", exc)
                continue
            self._handle(msg)

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, EngineRequest):
            try:
                self.engine.add_request(msg)
            except Exception as exc:
                self._send_error(msg.rid, f"{type(exc).__name__}: {exc}")
        elif isinstance(msg, AbortRequest):
            try:
                self.engine.abort_request(msg.rid, msg.reason)
            except KeyError:
                pass  # finished in the meantime
        elif isinstance(msg, EngineCall):
            self._call(msg)
        elif isinstance(msg, Shutdown):
            self.running = False

    def _send_error(self, rid: str, error: str) -> None:
        out = EngineOutput(rid=rid, finished=True, finish_reason="error", error=error, error_kind=ErrorKind.INTERNAL.value)
        self._send(StepOutputs(outputs=[out]))

    def _call(self, call: EngineCall) -> None:
        reply = EngineReply(call_id=call.call_id)
        if call.method not in CALLABLE_METHODS:
            reply.error = f"unknown engine method {call.method!r}"
        elif call.method in DEFERRED_METHODS:
            # answered by the step that finishes it; the loop keeps serving requests meanwhile
            try:
                pending = getattr(self.engine, DEFERRED_METHODS[call.method])(**call.args)
            except Exception as exc:
                reply.error = f"{type(exc).__name__}: {exc}"
            else:
                pending.add_done_callback(lambda p: self._reply(call.call_id, p.result, p.error))
                return
        else:
            try:
                reply.result = getattr(self.engine, call.method)(**call.args)
            except Exception as exc:
                reply.error = f"{type(exc).__name__}: {exc}"
        self._send(reply)

    def _reply(self, call_id: int, result: Any, error: str | None) -> None:
        self._send(EngineReply(call_id=call_id, result=result, error=error))


def run_engine_process(settings: Settings, replica: int, endpoints: ReplicaEndpoints) -> None:
    """multiprocessing (spawn) target: one engine replica."""
    from ..cli import setup_logging

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when this engine stops
    except ValueError:  # not the main thread (a Ray actor's task): Ray delivers no SIGINT there
        pass
    setup_logging(settings.log_level)
    codec = FrameCodec()
    ctx = zmq.Context()
    requests = ctx.socket(zmq.PULL)
    outputs = ctx.socket(zmq.PUSH)
    if endpoints.curve is not None:  # the server's sockets are CURVE servers
        for socket in (requests, outputs):
            secure_client(socket, endpoints.curve)
    requests.connect(endpoints.requests)
    outputs.connect(endpoints.outputs)
    started = time.perf_counter()
    try:
        from ..engine.engine import Engine

        faults = Faults.from_env()  # tests only (MINISGL_TEST_FAULTS); none otherwise
        faults.hand_down()
        faults.at_load()
        engine = Engine(settings)
        warm_up(engine)
        faults.install(engine)
    except BaseException as exc:
        log.error("engine replica %d failed to start:\n%s", replica, traceback.format_exc())
        outputs.send(codec.encode(EngineFatal(error=f"{type(exc).__name__}: {exc}")))
        requests.close(linger=0)
        outputs.close(linger=2000)
        ctx.term()
        sys.exit(1)
    ready = EngineReady(
        replica=replica,
        pid=os.getpid(),
        model_name=engine.model.name,
        model_path=str(engine.model.path),
        backend=engine.backend_name,
        backend_reason=engine.backend_reason,
        max_context_len=int(engine.max_context_len),
        kv_pool_tokens=int(engine.pool_tokens),
        eos_token_ids=list(engine.eos_token_ids),
        load_seconds=time.perf_counter() - started,
        device=_device_name(engine.runner.device),
        embedding_size=int(engine.runner.embedding_size),
    )
    outputs.send(codec.encode(ready))
    log.info("engine replica %d ready in %.1fs (pid %d)", replica, ready.load_seconds, ready.pid)
    loop = EngineLoop(engine, requests, outputs)
    try:
        loop.run()
    except BaseException as exc:
        log.error("engine replica %d crashed:\n%s", replica, traceback.format_exc())
        try:
            outputs.send(codec.encode(EngineFatal(error=f"{type(exc).__name__}: {exc}")), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        requests.close(linger=0)
        ctx.destroy(linger=1000)  # the EngineFatal is on its way before the exit is seen
        os._exit(1)
    engine.shutdown()
    requests.close(linger=0)
    outputs.close(linger=0 if loop.orphaned else 500)
    ctx.term()
    if loop.orphaned:
        remove_orphaned_dir(endpoints)
