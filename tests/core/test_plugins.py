"""The plugin registry: entry points, isolation of broken plugins, allow and block lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from minisgl.hookspecs import hookimpl
from minisgl.plugins import PluginError, Registry, selection_from_env
from minisgl.specs import BackendSpec, CacheSpec, QueuePolicySpec

BUILTIN_DISTS = {
    "minisgl-backend-hf",
    "minisgl-backend-sgl",
    "minisgl-backend-mlx",
    "minisgl-diffusion",
    "minisgl-schedulers",
    "minisgl-bench",
}


def run_cli(*args: str, env: dict[str, str] | None = None, extra_path: Path | None = None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    if extra_path is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), full_env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "minisgl", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def make_third_party(root: Path, name: str, module_source: str) -> Path:
    """A third-party plugin 'installed' the way pip leaves one: a module plus a
    .dist-info with entry_points.txt, on the path."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[minisgl]\n{name} = {name}\n")
    return root


def test_json_lists_the_plugin_distributions():
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = json.loads(result.stdout)["plugins"]
    dists = {p["distribution"] for p in plugins}
    assert BUILTIN_DISTS <= dists
    by_name = {p["name"]: p for p in plugins}
    assert by_name["hf"]["registered"] == {"backend": ["hf"], "setting": ["matmul_precision", "enable_sdp", "hf_cpu_kernels"]}
    assert by_name["server"]["registered"]["command"] == ["serve"]
    assert {"host", "port", "dp_size", "warm_prefixes"} <= set(by_name["server"]["registered"]["setting"])
    assert by_name["diffusion"]["registered"]["command"] == ["image"]
    assert by_name["diffusion"]["registered"]["route"] == ["images"]
    assert by_name["bench"]["registered"] == {"command": ["bench"]}
    assert by_name["hf"]["version"] == "0.1.0"
    assert all(p["error"] is None for p in plugins)


def test_listing_plugins_imports_no_model_code():
    code = (
        "import sys; from minisgl.plugins import get_registry; get_registry(); "
        "heavy = [m for m in ('torch', 'transformers', 'minisgl_backend_hf.runner') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_broken_third_party_plugin_is_reported_and_the_rest_works(tmp_path):
    make_third_party(tmp_path, "broken_plugin", "raise RuntimeError('boom at import')\n")
    result = run_cli("plugins", "--json", extra_path=tmp_path)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert "boom at import" in plugins["broken_plugin"]["error"]
    assert plugins["broken_plugin"]["distribution"] == "broken_plugin"
    assert plugins["broken_plugin"]["version"] == "1.2.3"
    assert plugins["hf"]["error"] is None
    table = run_cli("plugins", extra_path=tmp_path)
    assert table.returncode == 0
    assert "broken_plugin" in table.stdout and "failed" in table.stdout
    verbose = run_cli("plugins", "--verbose", extra_path=tmp_path)
    assert "Traceback" in verbose.stdout and "RuntimeError" in verbose.stdout


def test_hook_that_raises_is_isolated(tmp_path):
    make_third_party(
        tmp_path,
        "raising_hook",
        """
        from minisgl.hookspecs import hookimpl
        from minisgl.specs import CacheSpec

        @hookimpl
        def minisgl_register_caches(register):
            register(CacheSpec(name="tp_cache", description="ok", factory="x:y"))
            raise ValueError("hook exploded")
        """,
    )
    result = run_cli("plugins", "--json", extra_path=tmp_path)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert "hook exploded" in plugins["raising_hook"]["error"]
    assert "minisgl_register_caches" in plugins["raising_hook"]["error"]
    assert plugins["core"]["registered"]["cache"] == ["radix", "naive"]


def test_allow_list_empty_means_none_and_block_list():
    none = json.loads(run_cli("plugins", "--json", env={"MINISGL_PLUGINS": ""}).stdout)["plugins"]
    assert all(p["blocked"] for p in none)
    only = json.loads(run_cli("plugins", "--json", env={"MINISGL_PLUGINS": "core,hf"}).stdout)["plugins"]
    loaded = {p["name"] for p in only if not p["blocked"]}
    assert loaded == {"core", "hf"}
    blocked = json.loads(run_cli("plugins", "--json", env={"MINISGL_DISABLE_PLUGINS": "sgl"}).stdout)["plugins"]
    assert {p["name"] for p in blocked if p["blocked"]} == {"sgl"}
    assert selection_from_env({"MINISGL_PLUGINS": "no:mlx"}) == (None, {"mlx"})


class _Dup:
    @hookimpl
    def minisgl_register_caches(self, register):
        register(CacheSpec(name="radix", description="a second radix", factory="x:y"))


class _Good:
    @hookimpl
    def minisgl_register_backends(self, register):
        register(BackendSpec(name="toy", description="toy backend", factory="x:y", aliases=("toy2",)))

    @hookimpl
    def minisgl_register_schedulers(self, register):
        register(QueuePolicySpec(name="toyq", description="toy queue", factory="x:y"))


def test_registry_dedupes_validates_and_resolves_aliases():
    registry = Registry()
    registry.add_plugin(_Good(), "good")
    registry.add_plugin(_Good(), "good-again")
    assert registry.get("backend", "toy2").name == "toy"
    assert registry.plugins["good"].registered == {"backend": ["toy"], "queue_policy": ["toyq"]}
    assert "already registered by plugin 'good'" in registry.plugins["good-again"].error
    with pytest.raises(PluginError, match="unknown backend 'nope'; installed: toy"):
        registry.get("backend", "nope")


def test_register_rejects_wrong_spec_kind():
    class Wrong:
        @hookimpl
        def minisgl_register_backends(self, register):
            register(CacheSpec(name="c", description="d", factory="x:y"))

    registry = Registry()
    info = registry.add_plugin(Wrong(), "wrong")
    assert "expected BackendSpec" in info.error
