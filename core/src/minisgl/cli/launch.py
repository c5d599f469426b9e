"""`minisgl launch`: several servers from one TOML file (the original mini-sglang's format).

An instance counts as started once its /health answers; launch exits non-zero when the file
is wrong, when nothing is enabled, or when any enabled instance died or never got healthy
(its log's last lines are shown). Foreground instances keep launch running until they
exit; SIGINT or SIGTERM stops them."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time

import click

from ..launch import Instance, LaunchConfigError, load_config, log_tail, plan, start, wait_ready


@click.command(context_settings={"show_default": True})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="launch TOML (default: $AUTO_INFER_SGLANG_CONFIG; see examples/launch.toml)")
@click.option("--dry-run", is_flag=True, help="print each instance's command, environment and log file, start nothing")
@click.option("--health-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              help="seconds each instance may take to answer /health (loading and warming the model)")
def launch(config_path: str | None, dry_run: bool, health_timeout: float) -> None:
    """Start every enabled [instance.<name>] of a launch TOML file."""
    try:
        data = load_config(config_path)
        instances = plan(data)
    except LaunchConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    if not instances:
        raise click.ClickException(f"nothing to launch: {_why_nothing(data)}")
    for inst in instances:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in inst.env.items())
        click.echo(f"{inst.name}: {env + ' ' if env else ''}{shlex.join(inst.argv)}  > {inst.log_file}")
    if dry_run:
        return
    started = [(inst, start(inst)) for inst in instances]
    deadline = time.monotonic() + health_timeout
    failed = []
    for inst, proc in started:
        state = wait_ready(inst, proc, deadline)
        mode = "background" if inst.background else "foreground"
        if state == "ready":
            click.echo(f"started {inst.name} (pid {proc.pid}, {mode}"
                       + (f", {inst.health_url} answers)" if inst.health_url else ", no port to check)"))
        elif state == "exited":
            click.echo(f"{inst.name} exited with code 0 before serving (log: {inst.log_file})")
        else:
            what = f"exited with code {proc.returncode}" if state == "failed" else f"no /health after {health_timeout:g}s"
            click.echo(f"Error: {inst.name} {what}; the last lines of {inst.log_file}:\n{log_tail(inst.log_file)}",
                       err=True)
            failed.append(inst.name)
    foreground = [(inst, proc) for inst, proc in started if not inst.background and proc.poll() is None]
    if failed:
        # a half-started set is not what the file asked for: stop what would keep us waiting
        _stop([proc for inst, proc in started if proc.poll() is None and (not inst.background or inst.name in failed)])
        raise click.ClickException(f"{len(failed)} of {len(instances)} instance(s) failed: {', '.join(failed)}")
    sys.exit(_wait_foreground(foreground))


def _why_nothing(data: dict) -> str:
    if not data.get("master", {}).get("enable", True):
        return "[master] enable = false"
    names = [name for name in data.get("instance", {}) if name not in ("control", "server")]
    if not names:
        return "no [instance.<name>] table (see examples/launch.toml)"
    return f"every instance is disabled ({', '.join(names)}: [instance.<name>.control] enabled = false)"


def _wait_foreground(foreground: list[tuple[Instance, subprocess.Popen]]) -> int:
    """Until every foreground instance exits: 0 when stopped by a signal or all exited 0."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while foreground and not stopping:
            if all(proc.poll() is not None for _, proc in foreground):
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        stopping = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopping:
        _stop([proc for _, proc in foreground])
        click.echo("stopped " + ", ".join(inst.name for inst, _ in foreground))
        return 0
    codes = {inst.name: proc.returncode for inst, proc in foreground}
    bad = {name: code for name, code in codes.items() if code}
    for name, code in bad.items():
        click.echo(f"Error: {name} exited with code {code}", err=True)
    return 1 if bad else 0


def _stop(procs: list[subprocess.Popen], grace_s: float = 30.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
