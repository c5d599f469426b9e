"""`minisgl control <command>`: a client of a running server's ZeroMQ control plane.

    minisgl control metrics
    minisgl control flush_cache --tier host          # device | host | disk | all
    minisgl control cache_stats
    minisgl control warm "You are a helpful assistant." "Another prefix"
    minisgl control set_scheduler rr
    minisgl control drain timeout=30
    minisgl control resume
    minisgl control --curve-keygen ~/.minisgl/curve   # then ZMQ_CONTROL_CURVE_DIR=... on both sides
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

# where bare (non key=value) words go, per built-in command
POSITIONAL = {"warm": ("prefixes", True), "set_scheduler": ("name", False), "flush_cache": ("tier", False)}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_args(command: str, words: tuple[str, ...]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    bare: list[str] = []
    words_left = list(words)
    while words_left:
        word = words_left.pop(0)
        if word.startswith("--") and word[2:3].isalpha():  # `--tier host` or `--tier=host`: tier=host
            key, eq, value = word[2:].partition("=")
            key = key.replace("-", "_")
            if not eq:
                if not words_left:
                    raise click.UsageError(f"option {word} needs a value")
                value = words_left.pop(0)
            args[key] = _value(value)
            continue
        key, eq, value = word.partition("=")
        if eq and key.isidentifier():
            args[key] = _value(value)
        else:
            bare.append(word)
    if bare:
        if command not in POSITIONAL:
            raise click.UsageError(f"command {command!r} takes key=value arguments only, got {bare[0]!r}")
        key, many = POSITIONAL[command]
        if not many and len(bare) > 1:
            raise click.UsageError(f"command {command!r} takes one {key}")
        args[key] = bare if many else bare[0]
    return args


# options the command does not know (`--tier host`) are the control command's arguments
@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True})
@click.argument("command", required=False)
@click.argument("args", nargs=-1)
@click.option("--endpoint", default=None, help="control endpoint [env ZMQ_CONTROL_ENDPOINT, default tcp://127.0.0.1:5557]")
@click.option("--timeout", default=30.0, show_default=True, help="seconds to wait for the reply")
@click.option("--curve-keygen", "curve_keygen", type=click.Path(file_okay=False), default=None,
              help="write CURVE server and client key pairs into this directory and exit")
def control(command: str | None, args: tuple[str, ...], endpoint: str | None, timeout: float, curve_keygen: str | None) -> None:
    """Send COMMAND (metrics, warm, flush_cache, cache_stats, plugins, set_scheduler, drain, resume, or
    a plugin's) with ARGS (key=value or --key value, values parsed as JSON when they are) and print
    the JSON reply."""
    if curve_keygen:
        from ..control.security import create_curve_keys

        root = create_curve_keys(curve_keygen)
        click.echo(f"CURVE keys written to {root}; set ZMQ_CONTROL_CURVE_DIR={root} for the server and its clients")
        return
    if not command:
        raise click.UsageError("give a COMMAND (metrics, warm, flush_cache, cache_stats, plugins, set_scheduler, "
                               "drain, resume)")
    from ..control.client import ControlClient, ControlError

    endpoint = endpoint or os.environ.get("ZMQ_CONTROL_ENDPOINT", "tcp://127.0.0.1:5557")
    with ControlClient(endpoint, timeout=timeout) as client:
        try:
            reply = client.request(command, **parse_args(command, args))
        except ControlError as exc:
            raise click.ClickException(str(exc)) from None
    if not reply.ok:
        click.echo(f"Error: {reply.error}", err=True)
        sys.exit(1)
    click.echo(json.dumps(reply.result, indent=2, default=str))
