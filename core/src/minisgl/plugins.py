"""Plugin loading and the registry.

We iterate the `minisgl` entry-point group ourselves (rather than pluggy's
`load_setuptools_entrypoints`) so that each plugin's distribution and version are
recorded and one broken plugin, failing on import or inside a hook, is reported instead
of taking the process down.

Selection, like pytest's `-p no:NAME`:
- MINISGL_PLUGINS unset: every installed plugin; set but empty: none; "a,b": only those.
  An item "no:NAME" there blocks NAME.
- MINISGL_DISABLE_PLUGINS="a,b": block list.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pluggy

from . import hookspecs
from .specs import KINDS, SPEC_TYPES, BackendSpec, Kind, SettingSpec, Spec

if sys.version_info >= (3, 12):
    from importlib.metadata import entry_points
else:  # importlib-metadata backport gives the same selectable API on 3.10/3.11
    from importlib_metadata import entry_points

log = logging.getLogger(__name__)
GROUP = hookspecs.PROJECT

HOOK_KINDS: dict[str, tuple[Kind, ...]] = {
    "minisgl_register_backends": ("backend",),
    "minisgl_register_schedulers": ("dispatch_policy", "queue_policy"),
    "minisgl_register_caches": ("cache",),
    "minisgl_register_runners": ("runner",),
    "minisgl_register_control_commands": ("control_command",),
    "minisgl_register_settings": ("setting",),
    "minisgl_register_commands": ("command",),
    "minisgl_register_routes": ("route",),
    "minisgl_register_parsers": ("reasoning_parser", "tool_call_parser"),
    "minisgl_register_grammar_backends": ("grammar_backend",),
    "minisgl_register_proposers": ("proposer",),
}
CORE = "core"  # the owner of what the core declares itself


class PluginError(LookupError):
    """A name that no installed plugin registered."""


class SelectionError(ValueError):
    """A flag (--reasoning-parser, --tool-call-parser, --grammar-backend) names no installed plugin."""


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    blocked: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "registered": self.registered,
            "error": self.error,
            "traceback": self.traceback,
            "blocked": self.blocked,
        }


def _names(env: str | None) -> list[str]:
    return [n.strip() for n in (env or "").split(",") if n.strip()]


def selection_from_env(environ: dict[str, str] | None = None) -> tuple[set[str] | None, set[str]]:
    env = os.environ if environ is None else environ
    allow: set[str] | None = None
    block = set(_names(env.get("MINISGL_DISABLE_PLUGINS")))
    if "MINISGL_PLUGINS" in env:
        items = _names(env["MINISGL_PLUGINS"])
        block |= {i[3:] for i in items if i.startswith("no:")}
        allowed = {i for i in items if not i.startswith("no:")}
        # "no:x" alone means "everything but x"; an empty value means nothing at all.
        allow = allowed if (allowed or not items) else None
    return allow, block


class Registry:
    """Everything the installed plugins registered, by kind and name."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.specs: dict[Kind, dict[str, Spec]] = {k: {} for k in KINDS}
        self.owner: dict[tuple[Kind, str], str] = {}
        self.aliases: dict[Kind, dict[str, str]] = {k: {} for k in KINDS}
        self._declare_core()

    def _declare_core(self) -> None:
        """The core's own settings and subcommands, present even when every plugin is
        blocked; a plugin declaring one of these names again is reported, as for any clash."""
        from .cli import CORE_COMMANDS
        from .settings import CORE_SETTINGS

        for kind, specs in (("setting", CORE_SETTINGS), ("command", CORE_COMMANDS)):
            for spec in specs:
                self.specs[kind][spec.name] = spec
                self.owner[(kind, spec.name)] = CORE

    # ---- loading -------------------------------------------------------------------
    def load_entry_points(self, allow: set[str] | None = None, block: Iterable[str] = ()) -> None:
        block = set(block)
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
            if ep.name in self.plugins:
                continue  # the same entry point seen twice on sys.path
            if ep.name in block or (allow is not None and ep.name not in allow):
                info.blocked = True
                self.plugins[ep.name] = info
                continue
            try:
                module = ep.load()
            except BaseException as exc:
                self._fail(info, exc)
                self.plugins[ep.name] = info
                continue
            self.add_plugin(module, info)

    def add_plugin(self, obj: Any, info: PluginInfo | str) -> PluginInfo:
        """Register a module or object holding @hookimpls (entry points, tests, embedders)."""
        if isinstance(info, str):
            info = PluginInfo(name=info, module=getattr(obj, "__name__", repr(obj)))
        self.plugins[info.name] = info
        try:
            self.pm.register(obj, name=info.name)
        except Exception as exc:
            self._fail(info, exc)
            return info
        for hook_name, kinds in HOOK_KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                if impl.plugin_name != info.name:
                    continue
                try:
                    impl.function(register=self._register_callback(info, kinds))
                except BaseException as exc:
                    self._fail(info, exc, where=hook_name)
        return info

    def _register_callback(self, info: PluginInfo, kinds: tuple[Kind, ...]):
        def register(spec: Spec) -> None:
            kind = next((k for k in kinds if isinstance(spec, SPEC_TYPES[k])), None)
            if kind is None:
                expected = " or ".join(SPEC_TYPES[k].__name__ for k in kinds)
                raise TypeError(f"plugin {info.name!r} registered {spec!r}; expected {expected}")
            if not spec.name or not spec.name.replace("-", "_").replace(".", "_").isidentifier():
                raise ValueError(f"plugin {info.name!r}: invalid {kind} name {spec.name!r}")
            existing = self.owner.get((kind, spec.name))
            if existing is not None:
                # First registration wins; the later one is reported, not silently dropped.
                raise ValueError(f"{kind} {spec.name!r} is already registered by plugin {existing!r}")
            if kind == "setting":
                self._check_setting(spec)
            self.specs[kind][spec.name] = spec
            self.owner[(kind, spec.name)] = info.name
            for alias in getattr(spec, "aliases", ()):
                self.aliases[kind].setdefault(alias, spec.name)
            info.registered.setdefault(kind, []).append(spec.name)

        return register

    def _check_setting(self, spec: SettingSpec) -> None:
        if spec.name != spec.name.lower() or not spec.name.isidentifier():
            raise ValueError(f"setting name {spec.name!r} must be snake_case")
        try:
            msgspec.convert(spec.default, spec.type)
        except (msgspec.ValidationError, TypeError) as exc:
            raise ValueError(f"setting {spec.name!r}: default {spec.default!r} does not fit its type: {exc}") from None
        for other in self.specs["setting"].values():
            taken = set(spec.env + spec.flags) & set(other.env + other.flags)
            if taken:
                owner = self.owner[("setting", other.name)]
                raise ValueError(f"setting {spec.name!r}: {', '.join(sorted(taken))} already reach setting "
                                 f"{other.name!r} of plugin {owner!r}")

    def fail(self, kind: Kind, name: str, exc: BaseException) -> None:
        """What a plugin registered broke when it was used (a route that cannot load):
        reported against that plugin, as a plugin that fails to load is."""
        self._fail(self.plugins[self.owner[(kind, name)]], exc, where=f"{kind} {name!r}")

    @staticmethod
    def _fail(info: PluginInfo, exc: BaseException, where: str | None = None) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        info.error = f"{where}: {msg}" if where else msg
        info.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.warning("plugin %r failed to load: %s", info.name, info.error)

    # ---- lookups -------------------------------------------------------------------
    def get(self, kind: Kind, name: str) -> Spec:
        table = self.specs[kind]
        name = self.aliases[kind].get(name, name)
        if name not in table:
            known = ", ".join(sorted(table)) or "none installed"
            raise PluginError(f"unknown {kind.replace('_', ' ')} {name!r}; installed: {known}")
        return table[name]

    def names(self, kind: Kind) -> list[str]:
        return sorted(self.specs[kind])

    def backends(self) -> list[BackendSpec]:
        return list(self.specs["backend"].values())  # type: ignore[arg-type]

    def settings(self) -> list[SettingSpec]:
        """Every declared setting, the core's first (the order of --help and --print-config)."""
        return list(self.specs["setting"].values())  # type: ignore[arg-type]

    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if not p.ok]

    def loaded(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.ok and not p.blocked]


_registry: Registry | None = None
_lock = threading.Lock()


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, loaded once from entry points (server, engine and
    TP workers each call this in their own process)."""
    global _registry
    with _lock:
        if _registry is None or reload:
            reg = Registry()
            allow, block = selection_from_env()
            reg.load_entry_points(allow=allow, block=block)
            _registry = reg
        return _registry


def load_selected(kind: Kind, name: str | None, registry: Registry | None = None) -> Any:
    """What the plugin `name` of `kind` registered, loaded (None for no name), as chosen by
    the flag of that kind's name: checked at start, before any model loads, so a wrong name
    is a usage error naming the flag and what is installed."""
    if not name:
        return None
    try:
        return (registry or get_registry()).get(kind, name).load()
    except (PluginError, ImportError) as exc:  # ImportError: the plugin's library is missing
        raise SelectionError(f"--{kind.replace('_', '-')}: {exc}") from None


def set_registry(registry: Registry | None) -> None:
    """Install a registry built by hand (tests, embedders)."""
    global _registry
    with _lock:
        _registry = registry
