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
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import tomllib

RESERVED = {"control", "server"}


class LaunchConfigError(ValueError):
    pass


@dataclass
class Instance:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    log_file: str = ""
    background: bool = True


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
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
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
    return data


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
    module = master.get("server_module", "minisgl.launch_server")
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
        ))
    return instances


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
