"""The plugin contract: pluggy hookspecs in the style of simonw/llm.

Each hook receives a `register` callback. A plugin declares what it offers by calling
`register(spec)` with a spec from `minisgl.specs`; the core validates, deduplicates and
owns the registry. Plugins never mutate core state directly.
"""

import pluggy

PROJECT = "minisgl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def minisgl_register_backends(register):
    """Register model-runner backends: register(BackendSpec(...))."""


@hookspec
def minisgl_register_schedulers(register):
    """Register dispatch policies (DispatchPolicySpec) and queue policies (QueuePolicySpec)."""


@hookspec
def minisgl_register_caches(register):
    """Register prefix caches: register(CacheSpec(...))."""


@hookspec
def minisgl_register_runners(register):
    """Register modality runners (image, video, vision-language): register(RunnerSpec(...))."""


@hookspec
def minisgl_register_control_commands(register):
    """Register control-plane commands: register(ControlCommandSpec(...))."""


@hookspec
def minisgl_register_settings(register):
    """Declare the plugin's own settings: register(SettingSpec(...)). They load like the
    core's (defaults < TOML < env < flags) and are read as `settings.<name>`."""


@hookspec
def minisgl_register_commands(register):
    """Add `minisgl` subcommands: register(CommandSpec(name, description, factory="pkg.mod:cmd"))."""


@hookspec
def minisgl_register_routes(register):
    """Add HTTP routes to the server: register(RouteSpec(name, description, factory="pkg.mod:fn"))."""


@hookspec
def minisgl_register_parsers(register):
    """Register output parsers of chat answers: register(ReasoningParserSpec(...)),
    register(ToolCallParserSpec(...))."""


@hookspec
def minisgl_register_grammar_backends(register):
    """Register structured-output libraries: register(GrammarBackendSpec(...))."""


@hookspec
def minisgl_register_proposers(register):
    """Register speculative-decoding proposers: register(ProposerSpec(...))."""
