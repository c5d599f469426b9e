"""Click options generated from the settings table, shared by serve, generate, chat, bench.

Each setting with flags becomes an option whose default is None, so only flags the user
actually gave override the TOML file and environment (see settings.py for the order)."""

from __future__ import annotations

import functools
import sys
from typing import Any

import click

from ..settings import OPTIONS, Settings, SettingsError, format_config, load_settings


def _is_bool(name: str) -> bool:
    t = str(Settings.__annotations__[name])
    return t == "bool"


def settings_options(func):
    """Add every settings flag plus --config and --print-config to a click command. The
    command receives `settings: Settings` (and `settings_sources`) instead of the raw flags."""

    @functools.wraps(func)
    def wrapper(*args: Any, config: str | None, print_config: bool, **kwargs: Any):
        flags = {name: kwargs.pop(name) for name in list(kwargs) if name in OPTIONS}
        try:
            settings, sources = load_settings(flags=flags, config=config)
        except SettingsError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        if print_config:
            click.echo(format_config(settings, sources))
            sys.exit(0)
        return func(*args, settings=settings, settings_sources=sources, **kwargs)

    for name, opt in reversed(list(OPTIONS.items())):
        if not opt.flags:
            continue
        decls = list(opt.flags)
        if _is_bool(name):
            primary = decls[0][2:]
            decls = [f"{d}/--no-{d[2:]}" if d == decls[0] else d for d in decls]
            wrapper = click.option(*decls, name, default=None, help=opt.help + (f" [env {opt.env[0]}]" if opt.env else ""))(wrapper)
            del primary
        else:
            wrapper = click.option(
                *decls, name, default=None, type=str, metavar="VALUE",
                help=opt.help + (f" [env {opt.env[0]}]" if opt.env else ""),
            )(wrapper)
    wrapper = click.option("--print-config", is_flag=True, help="print each effective setting and its source, then exit")(wrapper)
    wrapper = click.option("--config", type=click.Path(dir_okay=False), default=None, help="TOML settings file")(wrapper)
    return wrapper
