"""The `minisgl` command line (click). The core's subcommands live in this package; plugins
add theirs through `minisgl_register_commands` (minisgl-server: `serve`, minisgl-diffusion:
`image`, minisgl-bench: `bench`). A subcommand is imported only when it runs, so listing
never pays for torch."""

from __future__ import annotations

import logging
import sys

import click

from ..specs import CommandSpec

CORE_COMMANDS = tuple(
    CommandSpec(name=name, description=description, factory=f"minisgl.cli.{name}:{name}")
    for name, description in [
        ("generate", "stream one completion to stdout (smoke test)"),
        ("chat", "interactive chat in the terminal (CLI demo)"),
        ("plugins", "list installed plugins and what they registered"),
        ("models", "built-in models and where they live on disk"),
        ("launch", "launch several servers from a TOML file"),
        ("control", "send a command to a running server's control plane"),
    ]
)
# what to install for a well-known subcommand that no installed plugin provides
INSTALL_HINTS = {
    "serve": "the server: pip install minisgl-server",
    "image": "the diffusion plugin: pip install minisgl-diffusion",
    "bench": "the benchmarks: pip install minisgl-bench",
}


def _commands() -> dict[str, CommandSpec]:
    from ..plugins import get_registry

    return get_registry().specs["command"]  # type: ignore[return-value]


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_commands())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = _commands().get(name)
        if spec is None and name in INSTALL_HINTS:
            return _missing(name, f"minisgl {name} needs {INSTALL_HINTS[name]}")
        if spec is None:
            return None
        try:
            return spec.load()
        except ImportError as exc:  # e.g. the server without its optional packages
            return _missing(name, f"minisgl {name} cannot load ({spec.factory_name}): {exc}")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, spec.description) for name, spec in _commands().items()])


def _missing(name: str, message: str) -> click.Command:
    """A stand-in that accepts any arguments and says, in one line, what is missing."""

    def fail() -> None:
        raise click.ClickException(message)

    settings = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
    return click.Command(name, callback=fail, help=message, context_settings=settings)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="minisgl", prog_name="minisgl")
def cli() -> None:
    """minisgl: a small sglang-style serving engine built as a plugin registry."""


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="minisgl", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
