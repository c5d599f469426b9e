"""`minisgl serve`: the HTTP server and its engine processes (registered in plugin.py)."""

from __future__ import annotations

import click

from minisgl.cli.options import settings_options


@click.command(context_settings={"show_default": True})
@settings_options
def serve(settings, settings_sources) -> None:
    """Start the Litestar server and its engine processes."""
    from .main import run_server

    run_server(settings, settings_sources)
