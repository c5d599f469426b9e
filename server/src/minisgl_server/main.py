"""`minisgl serve`: run the Litestar app on uvicorn; engines start in the app's lifespan.

SIGTERM and SIGINT drain (DrainingServer): the server keeps listening but admits nothing
(503 not_ready), running requests get up to DRAIN_TIMEOUT_S to finish, the rest end with
an error; then uvicorn stops, the lifespan stops the engines and removes the ipc temp dir,
and the process exits 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType

import click
import uvicorn

from minisgl.cli import setup_logging
from minisgl.plugins import SelectionError, get_registry
from minisgl.settings import Settings

from .app import create_app
from .engine_pool import SchedulerError
from .http_protocol import timed_protocol
from .ray_executor import ExecutorError
from .replica_layout import LayoutError
from .state import ServerState

log = logging.getLogger("minisgl.server")

SHUTDOWN_TAIL_S = 5  # after the drain: uvicorn's wait for responses still being written


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with SIGTERM/SIGINT handled by ServerState.shutdown: the first
    signal drains (the listener stays open, so late clients get an OpenAI-shaped 503 rather
    than a refused connection), a second ends the drain at once, a third exits without
    waiting. The signal is not raised again after the exit (uvicorn would), so a drained
    server exits 0."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self.signals: list[int] = []
        self._shutdown: asyncio.Task[None] | None = None
        self._ended_drain = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # runs as the signal handler, between two bytecodes of the event loop: only flags here
        self.signals.append(sig)
        if len(self.signals) >= 3:
            self.should_exit = True
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.signals and self._shutdown is None:
            name = signal.Signals(self.signals[0]).name
            log.info("%s: draining (a second signal ends the drain now, a third exits at once)", name)
            timeout = self.state.settings.drain_timeout_s
            self._shutdown = asyncio.create_task(self.state.shutdown(timeout), name="graceful-shutdown")
        elif len(self.signals) >= 2 and not self._ended_drain:
            self._ended_drain = True
            log.warning("%s again: ending the drain now", signal.Signals(self.signals[-1]).name)
            for pool in self.state.pools:
                pool.end_drain()
        return await super().on_tick(counter)


def run_server(settings: Settings, sources: dict[str, str] | None = None) -> None:
    setup_logging(settings.log_level)
    registry = get_registry()
    try:
        state = ServerState(settings, sources or {}, registry)
    except (SchedulerError, SelectionError, LayoutError, ExecutorError) as exc:  # a usage error, like a bad flag: exit status 2
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    app = create_app(state)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level == "DEBUG",
        timeout_graceful_shutdown=SHUTDOWN_TAIL_S,
        lifespan="on",
        # a client must finish its request headers within HTTP_HEADER_TIMEOUT (slowloris) and
        # its body within HTTP_BODY_TIMEOUT; idle kept-alive connections close after timeout_keep_alive
        http=timed_protocol(settings.http_header_timeout, settings.http_body_timeout),
        timeout_keep_alive=5,
    )
    server = DrainingServer(config, state)

    def shutdown() -> None:
        server.should_exit = True

    state.request_shutdown = shutdown
    log.info(
        "minisgl server: http://%s:%d (OpenAPI at /schema), model %s, backend %s (from %s), %d engine replica(s), "
        "scheduler %s",
        settings.host, settings.port, settings.model_path, settings.backend,
        (sources or {}).get("backend", "default"), len(state.pool.placements), state.pool.policy_name,
    )
    server.run()
    if state.startup_error:
        sys.exit(1)
