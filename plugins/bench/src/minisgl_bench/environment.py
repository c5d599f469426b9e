"""What every benchmark report states about where it ran: hardware, software, git revision."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    """The checkout's commit (with "+dirty" when it has changes), else the package version."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import version

    return f"minisgl {version('minisgl')} (not a git checkout)"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    try:
        from importlib.metadata import version

        info["transformers"] = version("transformers")
    except Exception:  # a report without the version is still a report
        pass
    return info


def settings_from_environment() -> dict[str, Any]:
    """The minisgl settings this process's environment sets (ATTENTION_BACKEND=fa, ...): they
    reach the engine beside the command's flags, so a report names them."""
    from minisgl.settings import SettingsError, load_settings

    try:
        settings, sources = load_settings(flags={"model_path": "-"})  # the report names the model itself
    except SettingsError as exc:  # the engine will refuse it the same way; the report says so
        return {"invalid": str(exc)}
    return {name: getattr(settings, name) for name, source in sources.items() if source.startswith("env")}


def header(**fields: Any) -> dict[str, Any]:
    """The report's preamble: the caller's fields (model, dtype, settings...), the settings
    the environment sets, the machine and the git revision."""
    env = settings_from_environment()
    return {**fields, **({"settings from the environment": env} if env else {}), "machine": machine(),
            "git_revision": git_revision()}


def header_lines(head: dict[str, Any]) -> list[str]:
    m = head["machine"]
    hw = f"{m['cpu']}, {m['cores']} cores ({m['cpu_capability']})" + (f", {m['gpus']}x {m['gpu']}" if "gpu" in m else "")
    lines = [f"machine: {hw}; python {m['python']}, torch {m['torch']}, transformers {m.get('transformers', '?')}",
             f"revision: {head['git_revision']}"]
    lines += [f"{k}: {v}" for k, v in head.items() if k not in ("machine", "git_revision")]
    return lines
