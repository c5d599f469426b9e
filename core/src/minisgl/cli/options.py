"""The one place the command line's shared flags come from: click options generated from the
declared settings (the core's `CORE_OPTIONS` and every installed plugin's), used by serve,
generate, chat and the benchmarks.

`settings_options` adds settings flags whose default is None, so only flags the user
actually gave override the TOML file and environment (see settings.py for the order);
`--help` still shows each declared default. `setting_option` is one setting's flags (all
its aliases) as a plain click option, for commands that take a value, not a Settings.
`sampling_options` are the request knobs generate and chat share."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from ..plugins import get_registry
from ..settings import SettingsError, choices, format_config, load_settings
from ..specs import SettingSpec

# What an engine in this process reads: the flags `generate` and `chat` list (the rest,
# the server's, still apply from --config and the environment). `port` is where
# tensor-parallel ranks meet.
ENGINE_SETTINGS = (
    "model_path", "trust_remote_code", "dtype", "dummy_weight", "backend", "device", "tp_size", "cpu_threads",
    "cpu_set", "max_running_requests", "max_seq_len_override", "memory_ratio", "max_prefill_length", "page_size",
    "num_pages", "cache_type", "prefix_cache", "reasoning_parser", "grammar_backend", "port", "log_level",
    "speculative_algorithm", "speculative_num_draft_tokens", "speculative_draft_model_path",
    "speculative_ngram_min_match_window_size",
    "speculative_ngram_max_match_window_size",
)


def _help(spec: SettingSpec) -> str:
    """The help text with the declared default and the environment variable. The option's
    own default stays None (see above), so click cannot show the default itself."""
    extra = ([f"default: {spec.default}"] if spec.default is not None else []) + [f"env {e}" for e in spec.env[:1]]
    return spec.help + (f"  [{'; '.join(extra)}]" if extra else "")


def _engine_settings(registry: Any) -> set[str]:
    """ENGINE_SETTINGS plus the settings of every plugin that registers a model runner."""
    backend_owners = {owner for (kind, _), owner in registry.owner.items() if kind == "backend"}
    return set(ENGINE_SETTINGS) | {
        s.name for s in registry.settings() if registry.owner.get(("setting", s.name)) in backend_owners
    }


def settings_options(func: Callable | None = None, *, engine_only: bool = False):
    """Add settings flags plus --config and --print-config to a click command. The command
    receives `settings: Settings` (and `settings_sources`) instead of the raw flags. With
    `engine_only`, only the flags an in-process engine reads are listed."""
    if func is None:
        return functools.partial(settings_options, engine_only=engine_only)
    registry = get_registry()
    wanted = _engine_settings(registry) if engine_only else None
    specs = [s for s in registry.settings() if s.flags and (wanted is None or s.name in wanted)]

    @functools.wraps(func)
    def wrapper(*args: Any, config: str | None, print_config: bool, **kwargs: Any):
        flags = {s.name: kwargs.pop(s.name) for s in specs}
        try:
            settings, sources = load_settings(flags=flags, config=config, registry=registry)
        except SettingsError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        if print_config:
            click.echo(format_config(settings, sources, registry))
            sys.exit(0)
        return func(*args, settings=settings, settings_sources=sources, **kwargs)

    for spec in reversed(specs):
        decls = list(spec.flags)
        help_ = _help(spec)
        if spec.type is bool:
            decls = [f"{flag}/--no-{flag[2:]}" for flag in decls]
            option = click.option(*decls, spec.name, default=None, help=help_)
        else:
            values = choices(spec)
            type_ = click.Choice([str(v) for v in values], case_sensitive=False) if values else str
            option = click.option(*decls, spec.name, default=None, type=type_, metavar=None if values else "VALUE",
                                  help=help_)
        wrapper = option(wrapper)
    wrapper = click.option("--print-config", is_flag=True, help="print each effective setting, its owner and source, then exit")(wrapper)
    wrapper = click.option("--config", type=click.Path(dir_okay=False), default=None, help="TOML settings file")(wrapper)
    return wrapper


def setting_option(name: str, *, param: str | None = None, extra_flags: Iterable[str] = (), **overrides: Any):
    """One declared setting's flags (every alias) as a click option with a plain value:
    `setting_option("model_path", param="model", default="smollm2-135m")`."""
    spec = get_registry().specs["setting"][name]
    values = choices(spec)
    kwargs: dict[str, Any] = {
        "default": spec.default, "show_default": True, "help": spec.help,
        "type": click.Choice([str(v) for v in values], case_sensitive=False) if values else None,
    }
    kwargs.update(overrides)
    return click.option(*spec.flags, *extra_flags, param or name, **kwargs)


def sampling_options(*, max_new_tokens: int, temperature: float, top_p: float):
    """--max-new-tokens, --temperature, --top-p and --url, with the command's defaults."""
    options = [
        click.option("--max-new-tokens", "--max-tokens", type=click.IntRange(min=1), default=max_new_tokens,
                     show_default=True, help="tokens to generate"),
        click.option("--temperature", type=click.FloatRange(min=0.0), default=temperature, show_default=True,
                     help="0 = greedy"),
        click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=top_p, show_default=True),
        click.option("--url", "--base-url", "url", default=None,
                     help="a running server (http://127.0.0.1:1919); default: start the engine here"),
    ]

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
