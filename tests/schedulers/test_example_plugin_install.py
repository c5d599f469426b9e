"""The example third-party scheduler distribution builds, installs with pip into a fresh
venv, shows up in `minisgl plugins`, and routes when selected by name."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from example_plugin_venv import build_example_venv, venv_env

ROUTE_SCRIPT = textwrap.dedent(
    """
    from minisgl.dispatch import ReplicaView, load_dispatch_policy
    from minisgl.engine.messages import EngineRequest
    from minisgl.sampling_params import SamplingParams
    policy = load_dispatch_policy("least_loaded")
    replicas = [
        ReplicaView(index=0, inflight=3, max_inflight=0),
        ReplicaView(index=2, inflight=1, max_inflight=0, kv_total_tokens=100, kv_used_tokens=80),
        ReplicaView(index=5, inflight=1, max_inflight=0, kv_total_tokens=100, kv_used_tokens=20),
    ]
    request = EngineRequest(rid="a", input_ids=[1, 2], sampling=SamplingParams())
    print(type(policy).__module__, policy.choose(request, replicas))
    """
)


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv that sees this environment's packages (torch, our editable installs)
    and has the example installed with pip, as a user's `pip install` would."""
    return build_example_venv(tmp_path_factory.mktemp("example-plugin"))


def run(python: Path, *args: str) -> str:
    result = subprocess.run([str(python), *args], capture_output=True, text=True, env=venv_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_example_is_installed_as_a_regular_distribution(venv_python: Path):
    out = run(venv_python, "-c", "import importlib.metadata as m; print(m.version('minisgl-scheduler-example'))")
    assert out.strip() == "0.1.0"
    with pytest.raises(ModuleNotFoundError):  # installed in the venv only
        __import__("minisgl_scheduler_example")


def test_minisgl_plugins_lists_the_example(venv_python: Path):
    plugins = {p["name"]: p for p in json.loads(run(venv_python, "-m", "minisgl", "plugins", "--json"))["plugins"]}
    example = plugins["scheduler_example"]
    assert example["distribution"] == "minisgl-scheduler-example"
    assert example["version"] == "0.1.0"
    assert example["error"] is None
    assert example["registered"] == {"dispatch_policy": ["least_loaded"]}
    assert "core" in plugins  # the core's own defaults are still there


def test_selected_by_name_it_routes_to_the_least_loaded_replica(venv_python: Path):
    module, chosen = run(venv_python, "-c", ROUTE_SCRIPT).split()
    assert module == "minisgl_scheduler_example.least_loaded"
    assert chosen == "5"  # fewest inflight (1, tied with 2), then the lower KV share


def test_scheduler_mode_names_it_in_that_venv(venv_python: Path):
    script = (
        "from minisgl.settings import load_settings\n"
        "from minisgl.dispatch import load_dispatch_policy\n"
        "s, _ = load_settings(flags={'scheduler': 'least_loaded'})\n"
        "print(type(load_dispatch_policy(s.scheduler, settings=s)).__name__)\n"
    )
    assert run(venv_python, "-c", script).strip() == "LeastLoaded"
