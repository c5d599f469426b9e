"""The `minisgl` command line (click). Each subcommand lives in its own module here."""

from __future__ import annotations

import importlib
import logging
import sys

import click

# subcommand -> "module:attr"; imported only when that subcommand runs, so `minisgl plugins`
# never pays for torch.
SUBCOMMANDS = {
    "serve": ("minisgl.cli.serve:serve", "start the HTTP server and its engine processes"),
    "generate": ("minisgl.cli.generate:generate", "stream one completion to stdout (smoke test)"),
    "chat": ("minisgl.cli.chat:chat", "interactive chat in the terminal (CLI demo)"),
    "bench": ("minisgl.cli.bench:bench", "benchmarks against transformers peers"),
    "plugins": ("minisgl.cli.plugins:plugins", "list installed plugins and what they registered"),
    "models": ("minisgl.cli.models:models", "built-in models and where they live on disk"),
    "launch": ("minisgl.cli.launch:launch", "launch several servers from a TOML file"),
    "image": ("minisgl.cli.image:image", "generate an image with a diffusion runner"),
    "control": ("minisgl.cli.control:control", "send a command to a running server's control plane"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        target, _ = SUBCOMMANDS[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise

            @click.command(name=name, help=SUBCOMMANDS[name][1])
            def unavailable() -> None:
                raise click.ClickException(f"'minisgl {name}' is not available in this build")

            return unavailable
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in SUBCOMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


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
