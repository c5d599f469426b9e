"""`minisgl models`: the built-in models, and where a model lives on disk."""

from __future__ import annotations

import json

import click


@click.group()
def models() -> None:
    """Built-in models (work without a model hub) and where they live on disk."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_command(as_json: bool) -> None:
    """List the built-in real model and the random-weight architecture presets."""
    from ..models import cache_dir, list_models

    infos = list_models()
    if as_json:
        click.echo(json.dumps({"models": [info.__dict__ for info in infos]}, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"minisgl models (cache: {cache_dir()})")
    for column in ("name", "kind", "description", "status"):
        table.add_column(column)
    for info in infos:
        status = "[green]ready[/]" if info.ready else "[yellow]not yet prepared[/]"
        table.add_row(info.name, info.kind, info.description, status)
    console = Console()
    console.print(table)
    console.print(
        "`minisgl models path NAME` prepares a model and prints its directory; "
        "a local directory or a hub id also works wherever a model is asked for."
    )


@models.command("path")
@click.argument("name")
@click.option("--dummy-weight", is_flag=True, help="mark the model as random-weight (no weights needed)")
@click.option("--quiet", "-q", is_flag=True, help="no progress or logs on stderr")
def path_command(name: str, dummy_weight: bool, quiet: bool) -> None:
    """Prepare NAME if needed and print its local directory (the last line of stdout)."""
    import logging

    from ..models import MissingDependencyError, ModelNotFoundError, resolve_model
    from . import setup_logging

    if not quiet:
        setup_logging("INFO")  # logging writes to stderr: stdout stays the path alone
    logging.getLogger("minisgl").setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        resolved = resolve_model(name, dummy_weight=dummy_weight, progress=not quiet)
    except (ModelNotFoundError, MissingDependencyError) as exc:
        raise click.ClickException(str(exc)) from exc
    except RuntimeError as exc:  # download or conversion failed
        raise click.ClickException(f"could not prepare {name!r}: {exc}") from exc
    if not quiet:
        click.echo(f"{resolved.name}: {resolved.kind}{', random weights' if resolved.dummy else ''}", err=True)
    click.echo(resolved.path)
