"""A fresh venv with the example scheduler distribution (examples/minisgl-scheduler-example)
installed by pip from its source, as a user would; shared by tests/schedulers and tests/pool.

The venv sees this environment's packages (torch, our editable installs) through a .pth
file, so building it takes seconds and needs no network."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minisgl-scheduler-example"


def build_example_venv(root: Path) -> Path:
    """Create the venv under `root`, install the example into it; return its python."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # --system-site-packages reaches the base interpreter, not the venv running the tests;
    # a .pth line adds this environment's site-packages (its own .pth files included).
    target_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    parent_sites = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in dict.fromkeys(parent_sites))
    Path(target_site, "_minisgl_parent_env.pth").write_text(lines)
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", str(source)],
        check=True,
    )
    return python


def venv_env() -> dict[str, str]:
    """The environment for processes of that venv: plugin discovery as a user would have it."""
    env = {k: v for k, v in os.environ.items() if k not in ("MINISGL_PLUGINS", "MINISGL_DISABLE_PLUGINS")}
    env["PYTHONPATH"] = ""
    return env
