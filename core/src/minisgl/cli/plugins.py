"""`minisgl plugins`: what is installed, what it registered, and what failed."""

from __future__ import annotations

import json

import click

from ..plugins import get_registry


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--verbose", "-v", is_flag=True, help="show tracebacks of failed plugins")
def plugins(as_json: bool, verbose: bool) -> None:
    """List installed plugins, what each registered, and any that failed to load."""
    registry = get_registry()
    infos = sorted(registry.plugins.values(), key=lambda p: p.name)
    if as_json:
        data = []
        for info in infos:
            item = info.to_dict()
            if not verbose:
                item.pop("traceback")
            data.append(item)
        click.echo(json.dumps({"plugins": data}, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title="minisgl plugins", show_lines=False)
    for column in ("plugin", "distribution", "version", "registered", "status"):
        table.add_column(column)
    for info in infos:
        registered = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items())
        if info.blocked:
            status = "[yellow]blocked[/]"
        elif info.ok:
            status = "[green]ok[/]"
        else:
            status = f"[red]failed[/]: {info.error}"
        table.add_row(info.name, info.distribution or "-", info.version or "-", registered or "-", status)
    console = Console()
    console.print(table)
    if verbose:
        for info in registry.failed():
            console.print(f"\n[bold red]{info.name}[/] ({info.module}) failed:")
            console.print(info.traceback, markup=False, highlight=False)
    elif registry.failed():
        console.print("run `minisgl plugins --verbose` for tracebacks")
