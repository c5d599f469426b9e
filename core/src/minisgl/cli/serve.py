"""`minisgl serve`: the HTTP server (minisgl-server) and its engine processes."""

from __future__ import annotations

import click

from .options import settings_options


@click.command(context_settings={"show_default": False})
@settings_options
def serve(settings, settings_sources) -> None:
    """Start the Litestar server and its engine processes."""
    try:
        from minisgl_server.main import run_server
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"minisgl serve needs the server distribution: pip install minisgl-server ({exc})"
        ) from None
    run_server(settings, settings_sources)
