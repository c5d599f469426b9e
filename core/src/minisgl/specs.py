"""What plugins register: small, declarative specs.

A spec names a thing and says where to import it from. Heavy imports (torch model code,
kernels) happen late, when the thing is used, never when a plugin registers it, so
listing plugins stays fast and survives missing optional packages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Literal

import msgspec

Kind = Literal["backend", "dispatch_policy", "queue_policy", "cache", "runner", "control_command", "setting", "command",
               "route", "reasoning_parser", "tool_call_parser", "grammar_backend", "proposer"]
KINDS: tuple[Kind, ...] = (
    "backend",
    "dispatch_policy",
    "queue_policy",
    "cache",
    "runner",
    "control_command",
    "setting",
    "command",
    "route",
    "reasoning_parser",
    "tool_call_parser",
    "grammar_backend",
    "proposer",
)


def load_object(target: str | Callable[..., Any]) -> Any:
    """Resolve "package.module:attr.path" (or return a callable as is)."""
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"import string must look like 'package.module:attr', got {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Spec(msgspec.Struct, kw_only=True, frozen=True):
    """Common fields: a unique name within its kind, a one-line description, and the
    factory as an import string ("pkg.mod:Class") or a callable."""

    name: str
    description: str
    factory: Any  # str | Callable

    def load(self) -> Any:
        return load_object(self.factory)

    @property
    def factory_name(self) -> str:
        if isinstance(self.factory, str):
            return self.factory
        return f"{getattr(self.factory, '__module__', '?')}:{getattr(self.factory, '__qualname__', '?')}"


class BackendSpec(Spec, frozen=True):
    """A model-runner backend. `probe` is an import string of a function
    `probe(settings) -> str | None` returning None when the backend can run here, else the
    reason it cannot (e.g. "needs CUDA: torch.cuda.is_available() is False").

    `auto_rank` is the backend's own claim for `--backend auto`, per device ("cuda", "mps",
    "cpu"): the highest-ranked available backend wins; a device it does not rank never
    auto-picks it (it still runs there when asked for by name). A vision-language model
    goes only to a backend that declares `vision`."""

    probe: Any = None
    auto_rank: dict[str, int] = {}
    aliases: tuple[str, ...] = ()
    vision: bool = False  # runs vision-language models (its runner takes ForwardBatch.images)
    tensor_parallel: bool = False  # spans --tp-size ranks; others are refused a --tp-size above 1

    def availability(self, settings: Any = None) -> str | None:
        if self.probe is None:
            return None
        try:
            return load_object(self.probe)(settings)
        except Exception as exc:  # a probe must never take the program down
            return f"availability probe failed: {type(exc).__name__}: {exc}"


class DispatchPolicySpec(Spec, frozen=True):
    """Chooses an engine replica for a request (SCHEDULER_MODE / --scheduler)."""


class QueuePolicySpec(Spec, frozen=True):
    """Orders the waiting queue of one engine (--queue-policy)."""


class CacheSpec(Spec, frozen=True):
    """A prefix cache over KV slots (--cache-type)."""


class RunnerSpec(Spec, frozen=True):
    """A modality runner: image or video generation, vision-language chat."""

    modality: str = "image"  # image | video | vision-language
    probe: Any = None

    def availability(self, settings: Any = None) -> str | None:
        if self.probe is None:
            return None
        try:
            return load_object(self.probe)(settings)
        except Exception as exc:
            return f"availability probe failed: {type(exc).__name__}: {exc}"


class ControlCommandSpec(Spec, frozen=True):
    """A control-plane command. The factory is `handler(context, **args) -> dict`."""


class CommandSpec(Spec, frozen=True):
    """A `minisgl` subcommand. The factory is a click command ("pkg.mod:click_command"),
    imported only when the subcommand runs."""


class RouteSpec(Spec, frozen=True):
    """HTTP routes the server mounts. The factory takes no arguments and returns Litestar
    route handlers or a Router (one, or a list); the server imports and calls it when it
    builds its app, so the core never imports litestar. A handler answering error statuses
    besides a JSON body's (400, 413, 415, 500) lists them in `opt={"error_statuses": (...)}`
    for the OpenAPI document."""

    def handlers(self) -> list[Any]:
        made = self.load()()
        return list(made) if isinstance(made, (list, tuple)) else [made]


class ReasoningParserSpec(Spec, frozen=True):
    """Splits a chat answer's thinking from its content (--reasoning-parser). The factory
    takes no arguments and returns a fresh splitter per sequence (see
    minisgl.frontend.reasoning.ReasoningSplitter)."""


class ToolCallParserSpec(Spec, frozen=True):
    """How a model writes tool calls (--tool-call-parser). The factory is a format object
    with `parser(max_calls)` (a fresh ToolCallParser per sequence) and
    `grammar(functions, parallel)` (the Lark grammar that forces calls); see
    minisgl.frontend.tool_calls.JSONToolCalls."""


class GrammarBackendSpec(Spec, frozen=True):
    """The library behind structured outputs (--grammar-backend). The factory takes the
    model's transformers tokenizer and its vocabulary size and returns a
    minisgl.grammar.GrammarBackend."""


class ProposerSpec(Spec, frozen=True):
    """Drafts tokens for speculative decoding (--speculative-algorithm). The factory takes
    the settings and returns a minisgl.engine.speculative.Proposer."""


class SettingSpec(msgspec.Struct, kw_only=True, frozen=True):
    """A setting its owner declares (the core for its own, a plugin for its knobs).

    `type` is what msgspec validates against: a Python type, `Annotated[...,
    msgspec.Meta(...)]` or a `Literal`. `env` and `flags` are how it is reached from the
    outside (first env var found wins). When `unsupported` says why, any value other than
    `default` is refused with that reason, so a knob never silently does nothing."""

    name: str  # snake_case; also the TOML key and the attribute on Settings
    type: Any
    default: Any
    env: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    help: str = ""
    unsupported: str | None = None


SPEC_TYPES: dict[Kind, type] = {
    "backend": BackendSpec,
    "dispatch_policy": DispatchPolicySpec,
    "queue_policy": QueuePolicySpec,
    "cache": CacheSpec,
    "runner": RunnerSpec,
    "control_command": ControlCommandSpec,
    "setting": SettingSpec,
    "command": CommandSpec,
    "route": RouteSpec,
    "reasoning_parser": ReasoningParserSpec,
    "tool_call_parser": ToolCallParserSpec,
    "grammar_backend": GrammarBackendSpec,
    "proposer": ProposerSpec,
}
