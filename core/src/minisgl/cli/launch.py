"""`minisgl launch`: several servers from one TOML file (the original mini-sglang's format)."""

from __future__ import annotations

import shlex
import sys
import time

import click

from ..launch import LaunchConfigError, load_config, plan, start


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="launch TOML (default: $AUTO_INFER_SGLANG_CONFIG)")
@click.option("--dry-run", is_flag=True, help="print each instance's command, environment and log file, start nothing")
def launch(config_path: str | None, dry_run: bool) -> None:
    """Start every enabled [instance.<name>] of a launch TOML file."""
    try:
        instances = plan(load_config(config_path))
    except LaunchConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    if not instances:
        click.echo("nothing to launch ([master] enable = false, or no enabled instance)")
        return
    for inst in instances:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in inst.env.items())
        line = f"{inst.name}: {env + ' ' if env else ''}{shlex.join(inst.argv)}  > {inst.log_file}"
        click.echo(line)
    if dry_run:
        return
    foreground = []
    for inst in instances:
        proc = start(inst)
        click.echo(f"started {inst.name} (pid {proc.pid}, {'background' if inst.background else 'foreground'})")
        if not inst.background:
            foreground.append((inst, proc))
    # Foreground instances keep `minisgl launch` alive until they exit.
    try:
        while foreground:
            foreground = [(i, p) for i, p in foreground if p.poll() is None]
            time.sleep(0.5)
    except KeyboardInterrupt:
        for _, proc in foreground:
            proc.terminate()
