"""The core depends on no plugin and not on the server: no module under core/src imports
one of their packages (they reach the core through entry points, never the reverse)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE_SRC = Path(__file__).resolve().parents[2] / "core" / "src" / "minisgl"
OURS = ("minisgl_server", "minisgl_diffusion", "minisgl_backend", "minisgl_schedulers", "minisgl_bench")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_core_imports_no_plugin_or_server_package():
    files = sorted(CORE_SRC.rglob("*.py"))
    assert len(files) > 20  # the walk found the core
    bad = {
        str(path.relative_to(CORE_SRC)): found
        for path in files
        if (found := [name for name in _imports(path) if name.split(".")[0].startswith(OURS)])
    }
    assert not bad, f"core modules import plugin or server packages: {bad}"
