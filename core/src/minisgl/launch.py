"""Launch one or more servers from a TOML file (the original mini-sglang's format).

```
[master]                 enable, project_dir, python_path, server_module
[instance.control]       defaults for every instance: log_dir, background
[instance.server]        server flags shared by every instance (host, port, tp_size, ...)
[instance.<name>.control]  enabled, background, log_file, gpu_ids ("all" | "none" | "0,1"),
                           ray_address (the Ray cluster for distributed_executor = "ray")
[instance.<name>.server]   this instance's flags: key_name -> --key-name
```
The file comes from `--config` or AUTO_INFER_SGLANG_CONFIG; AUTO_INFER_SGLANG_OVERRIDES (a
JSON object) is deep-merged over it. Server keys become flags: strings and numbers as
`--key value`, true as a bare `--key`, false omitted, lists as repeated pairs, and
`extra_args` appended as raw tokens.

The file is checked against that contract before anything starts: an unknown key (and, for
minisgl's own server module, a server key that names no `minisgl serve` flag) is an error
that names the key and its line.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import tomllib

RESERVED = {"control", "server"}
DEFAULT_MODULE = "minisgl.launch_server"
# the contract's keys and their types (ray_address: the Ray cluster of distributed_executor = "ray")
MASTER_KEYS = {"enable": bool, "project_dir": str, "python_path": str, "server_module": str}
CONTROL_KEYS = {"enabled": bool, "background": bool, "log_dir": str, "log_file": str, "gpu_ids": str, "ray_address": str}


class LaunchConfigError(ValueError):
    pass


@dataclass
class Instance:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    log_file: str = ""
    background: bool = True
    health_url: str | None = None  # GET answers 200 once the server is ready (None: nothing to ask)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(path: str | None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    path = path or env.get("AUTO_INFER_SGLANG_CONFIG")
    if not path:
        raise LaunchConfigError("no launch file: pass --config FILE or set AUTO_INFER_SGLANG_CONFIG")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise LaunchConfigError(f"launch file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LaunchConfigError(f"launch file {path} is not valid TOML: {exc}") from None
    overrides = env.get("AUTO_INFER_SGLANG_OVERRIDES")
    if overrides:
        try:
            extra = json.loads(overrides)
        except json.JSONDecodeError as exc:
            raise LaunchConfigError(f"AUTO_INFER_SGLANG_OVERRIDES is not valid JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise LaunchConfigError("AUTO_INFER_SGLANG_OVERRIDES must be a JSON object")
        data = deep_merge(data, extra)
    validate(data, text, path)
    return data


def _key_parts(text: str) -> list[str]:
    return [p.strip("\"'") for p in re.findall(r"\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+", text)]


def line_of(text: str, path: tuple[str, ...]) -> int | None:
    """The line (from 1) where the TOML key at `path` is written, as a table header or as a
    `key = value` line (tomllib keeps no positions)."""
    table: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            table = _key_parts(line.strip("[]"))
            full = table
        elif "=" in line:
            full = table + _key_parts(line.split("=", 1)[0])
        else:
            continue
        if tuple(full[: len(path)]) == path:
            return number
    return None


def _server_keys() -> set[str] | None:
    """The server keys `minisgl serve` takes: each declared setting's flags, as TOML keys."""
    try:
        from .plugins import get_registry

        flags = [flag for spec in get_registry().settings() for flag in spec.flags]
    except Exception:  # pragma: no cover - no registry: nothing to check against
        return None
    return {flag[2:].replace("-", "_") for flag in flags} | {"extra_args", "config"}


def validate(data: dict[str, Any], text: str, path: str) -> None:
    """Check the file against the contract; every problem is named with its line."""
    problems: list[str] = []

    def where(keys: tuple[str, ...]) -> str:
        line = line_of(text, keys)
        return f"{path}:{line}" if line else f"{path} (AUTO_INFER_SGLANG_OVERRIDES)"

    def unknown(keys: tuple[str, ...], known: Any, what: str) -> None:
        hint = difflib.get_close_matches(keys[-1], list(known), n=1)
        problems.append(f"{where(keys)}: unknown key {keys[-1]!r} in {what}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else ""))

    def check(table: Any, keys: tuple[str, ...], schema: dict[str, type]) -> None:
        if not isinstance(table, dict):
            problems.append(f"{where(keys)}: [{'.'.join(keys)}] must be a table")
            return
        for key, value in table.items():
            if key not in schema:
                unknown((*keys, key), schema, f"[{'.'.join(keys)}]")
            elif not isinstance(value, schema[key]):
                problems.append(f"{where((*keys, key))}: {key} must be a {schema[key].__name__}, got {value!r}")

    for key in data:
        if key not in ("master", "instance"):
            unknown((key,), ("master", "instance"), "the file (its tables are [master] and [instance.*])")
    master = data.get("master", {})
    check(master, ("master",), MASTER_KEYS)
    own_server = isinstance(master, dict) and master.get("server_module", DEFAULT_MODULE) == DEFAULT_MODULE
    server_keys = _server_keys() if own_server else None
    instances = data.get("instance", {})
    if not isinstance(instances, dict):
        problems.append(f"{where(('instance',))}: [instance] must be a table")
        instances = {}

    def check_server(table: Any, keys: tuple[str, ...]) -> None:
        if not isinstance(table, dict):
            problems.append(f"{where(keys)}: [{'.'.join(keys)}] must be a table")
        elif server_keys is not None:
            for key in table:
                if key not in server_keys:
                    unknown((*keys, key), server_keys, f"[{'.'.join(keys)}]: no `minisgl serve` flag --"
                            + key.replace("_", "-"))

    check(instances.get("control", {}), ("instance", "control"), CONTROL_KEYS)
    check_server(instances.get("server", {}), ("instance", "server"))
    for name, table in instances.items():
        if name in RESERVED:
            continue
        if not isinstance(table, dict):
            problems.append(f"{where(('instance', name))}: [instance.{name}] must be a table")
            continue
        for key in table:
            if key not in RESERVED:
                unknown(("instance", name, key), RESERVED, f"[instance.{name}] (its tables are control and server)")
        check(table.get("control", {}), ("instance", name, "control"), CONTROL_KEYS)
        check_server(table.get("server", {}), ("instance", name, "server"))
    if problems:
        raise LaunchConfigError("\n".join(problems))


def server_flags(server: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in server.items():
        if key == "extra_args":
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(flag)
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        elif isinstance(value, dict):
            raise LaunchConfigError(f"server key {key!r} is a table; only values and lists become flags")
        else:
            argv += [flag, str(value)]
    extra = server.get("extra_args", [])
    if not isinstance(extra, list):
        raise LaunchConfigError("extra_args must be a list of strings")
    return argv + [str(x) for x in extra]


def plan(data: dict[str, Any]) -> list[Instance]:
    """The instances to start, with their command lines, environment and log files."""
    master = data.get("master", {})
    if not master.get("enable", True):
        return []
    project_dir = master.get("project_dir")
    default_python = os.path.join(project_dir, "env", "bin", "python") if project_dir else sys.executable
    python = master.get("python_path", default_python)
    module = master.get("server_module", DEFAULT_MODULE)
    instances_table = data.get("instance", {})
    global_control = instances_table.get("control", {})
    global_server = instances_table.get("server", {})
    instances = []
    for name, table in instances_table.items():
        if name in RESERVED:
            continue
        if not isinstance(table, dict):
            raise LaunchConfigError(f"[instance.{name}] must be a table")
        control = {**global_control, **table.get("control", {})}
        if not control.get("enabled", True):
            continue
        server = {**global_server, **table.get("server", {})}
        env: dict[str, str] = {}
        gpu_ids = str(control.get("gpu_ids", "all")).strip()
        if gpu_ids == "none":
            env["CUDA_VISIBLE_DEVICES"] = ""
        elif gpu_ids != "all":
            env["CUDA_VISIBLE_DEVICES"] = gpu_ids
        if control.get("ray_address"):  # with server.distributed_executor = "ray": its replicas go there
            env["RAY_ADDRESS"] = str(control["ray_address"])
        log_file = control.get("log_file") or os.path.join(control.get("log_dir", "/tmp"), f"minisgl-{name}.log")
        instances.append(Instance(
            name=name,
            argv=[python, "-m", module, *server_flags(server)],
            env=env,
            log_file=log_file,
            background=bool(control.get("background", True)),
            health_url=_health_url(server, module),
        ))
    return instances


def _health_url(server: dict[str, Any], module: str) -> str | None:
    port = server.get("port")
    if port is None and module == DEFAULT_MODULE:
        from .plugins import get_registry

        spec = get_registry().specs["setting"].get("port")
        port = spec.default if spec is not None else None
    if port is None:
        return None
    host = str(server.get("host", "127.0.0.1"))
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: ask over loopback
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/health"


def wait_ready(instance: Instance, proc: subprocess.Popen, deadline: float) -> str:
    """Poll until the instance's /health answers 200: "ready", "exited" (code 0, e.g.
    --print-config), "failed" (the process died) or "timeout"."""
    while True:
        code = proc.poll()
        if code is not None:
            return "exited" if code == 0 else "failed"
        if instance.health_url is None:
            return "ready"
        try:
            with urllib.request.urlopen(instance.health_url, timeout=2) as response:
                if response.status == 200:
                    return "ready"
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.5)


def log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def start(instance: Instance) -> subprocess.Popen:
    os.makedirs(os.path.dirname(instance.log_file) or ".", exist_ok=True)
    log = open(instance.log_file, "ab")
    return subprocess.Popen(
        instance.argv,
        env={**os.environ, **instance.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=instance.background,
    )
