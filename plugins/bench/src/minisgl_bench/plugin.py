"""minisgl-bench's plugin: the `minisgl bench` subcommand."""

from minisgl.hookspecs import hookimpl
from minisgl.specs import CommandSpec


@hookimpl
def minisgl_register_commands(register):
    register(CommandSpec(
        name="bench",
        description="benchmarks against transformers peers",
        factory="minisgl_bench.cli:bench",
    ))
