"""Click options generated from the declared settings (the core's and every installed
plugin's), shared by serve, generate, chat, bench.

Each setting with flags becomes an option whose default is None, so only flags the user
actually gave override the TOML file and environment (see settings.py for the order)."""

from __future__ import annotations

import functools
import sys
from typing import Any

import click

from ..plugins import get_registry
from ..settings import SettingsError, format_config, load_settings


def settings_options(func):
    """Add every settings flag plus --config and --print-config to a click command. The
    command receives `settings: Settings` (and `settings_sources`) instead of the raw flags."""
    registry = get_registry()
    specs = [s for s in registry.settings() if s.flags]

    @functools.wraps(func)
    def wrapper(*args: Any, config: str | None, print_config: bool, **kwargs: Any):
        flags = {s.name: kwargs.pop(s.name) for s in specs}
        try:
            settings, sources = load_settings(flags=flags, config=config, registry=registry)
        except SettingsError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        if print_config:
            click.echo(format_config(settings, sources, registry))
            sys.exit(0)
        return func(*args, settings=settings, settings_sources=sources, **kwargs)

    for spec in reversed(specs):
        decls = list(spec.flags)
        help_ = spec.help + (f" [env {spec.env[0]}]" if spec.env else "")
        if spec.type is bool:
            decls[0] = f"{decls[0]}/--no-{decls[0][2:]}"
            wrapper = click.option(*decls, spec.name, default=None, help=help_)(wrapper)
        else:
            wrapper = click.option(*decls, spec.name, default=None, type=str, metavar="VALUE", help=help_)(wrapper)
    wrapper = click.option("--print-config", is_flag=True, help="print each effective setting, its owner and source, then exit")(wrapper)
    wrapper = click.option("--config", type=click.Path(dir_okay=False), default=None, help="TOML settings file")(wrapper)
    return wrapper
