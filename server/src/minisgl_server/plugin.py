"""minisgl-server's plugin: it brings the `minisgl serve` subcommand."""

from minisgl.hookspecs import hookimpl
from minisgl.specs import CommandSpec


@hookimpl
def minisgl_register_commands(register):
    register(CommandSpec(
        name="serve",
        description="start the HTTP server and its engine processes",
        factory="minisgl_server.cli:serve",
    ))
