"""Where one engine replica's process runs, as EngineClient sees it: a local child process
(LocalProcess, the default) or anything with the same members, such as the server's Ray
actors (minisgl_server.ray_executor). The client binds the sockets and speaks the protocol;
a host only starts the engine loop somewhere that can reach them, and says when it ends."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

from ..settings import Settings
from .endpoints import ReplicaEndpoints
from .engine_process import run_engine_process


class EngineHost(Protocol):
    node: str  # where it runs, for people and /health: "local", or a Ray node's address
    # a remote host learns of a death late (a Ray actor: seconds), so the client also takes
    # the engine's data connection closing for its death
    remote: bool

    @property
    def pid(self) -> int | None: ...

    def start(self, on_exit: Callable[[str], None]) -> None:
        """Start the engine loop; call on_exit(why) once, on the running event loop, when it ends."""

    def is_alive(self) -> bool: ...

    def terminate(self) -> None:
        """End it now, without the Shutdown frame's clean stop."""

    def kill(self) -> None:
        """End it now without waiting, even when it cannot act on a signal (stopped, hung in
        a kernel): the watchdog's way. Its end is reported as any other (on_exit)."""

    def detach(self) -> None:
        """Stop watching it: on_exit is not called after this."""


# what EngineClient builds its host with: (settings, replica index, endpoints, extra environment)
HostFactory = Callable[[Settings, int, ReplicaEndpoints, Mapping[str, str]], EngineHost]


@contextmanager
def _environment(extra: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class LocalProcess:
    """The engine in a child process of the server, watched through its sentinel."""

    node = "local"
    remote = False  # the process sentinel fires at once

    def __init__(self, settings: Settings, replica: int, endpoints: ReplicaEndpoints, env: Mapping[str, str]) -> None:
        self.settings, self.replica, self.endpoints = settings, replica, endpoints
        self.env = dict(env)  # for the engine process only (CUDA_VISIBLE_DEVICES: its GPU)
        self.process: multiprocessing.process.BaseProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, on_exit: Callable[[str], None]) -> None:
        # spawn, not fork: torch and CUDA are not fork-safe. Not a daemon: a tensor-parallel
        # engine starts its rank processes; it ends itself when the server is gone (run_engine_process)
        self.process = multiprocessing.get_context("spawn").Process(
            target=run_engine_process, args=(self.settings, self.replica, self.endpoints),
            name=f"minisgl-engine-{self.replica}", daemon=False,
        )
        with _environment(self.env):  # spawn copies os.environ when the child starts
            self.process.start()
        process = self.process

        def exited() -> None:
            self.detach()
            process.join(1.0)  # the sentinel can fire before the exit status is there to reap
            on_exit(f"engine process {process.pid} exited with code {process.exitcode}")

        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(process.sentinel, exited)

    def is_alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def terminate(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.join(5)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()  # SIGKILL: a stopped process takes no SIGTERM until it is continued

    def detach(self) -> None:
        if self._loop is not None and self.process is not None:
            try:
                self._loop.remove_reader(self.process.sentinel)
            except (RuntimeError, ValueError, OSError):
                pass
            self._loop = None
