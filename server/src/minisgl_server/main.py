"""`minisgl serve`: run the Litestar app on uvicorn; engines start in the app's lifespan."""

from __future__ import annotations

import logging
import sys

import click
import uvicorn

from minisgl.cli import setup_logging
from minisgl.plugins import get_registry
from minisgl.settings import FAST_STREAM_DECODE_NOTE, Settings

from .app import create_app
from .engine_pool import SchedulerError
from .state import ServerState

log = logging.getLogger("minisgl.server")


def run_server(settings: Settings, sources: dict[str, str] | None = None) -> None:
    setup_logging(settings.log_level)
    if settings.fast_stream_decode:
        log.info(FAST_STREAM_DECODE_NOTE)  # loading logged it too, before logging was set up
    registry = get_registry()
    try:
        state = ServerState(settings, sources or {}, registry)
    except SchedulerError as exc:  # a usage error, like a bad flag: exit status 2
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    app = create_app(state)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level == "DEBUG",
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = uvicorn.Server(config)

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
