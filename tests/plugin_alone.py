"""Run by `nox -s plugin`: with only the core and ONE plugin distribution installed, the
plugin must register through its entry point alone, and its availability probes must answer
(an available backend, or a reason naming what to install)."""

from __future__ import annotations

import json
import subprocess
import sys

EXPECTED = {
    "hf": {"backend": ["hf"]},
    "sgl": {"backend": ["sgl"]},
    "mlx": {"backend": ["mlx"]},
    "diffusion": {"runner": ["diffusers-image", "diffusers-video"]},
    "schedulers": {"queue_policy": ["lpm", "priority"], "dispatch_policy": ["fsfs", "random", "cache_aware"]},
}


def main(name: str) -> None:
    out = subprocess.run(
        ["minisgl", "plugins", "--json"], check=True, capture_output=True, text=True
    ).stdout
    plugins = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert set(plugins) == {"core", name}, f"expected only core and {name}, got {sorted(plugins)}"
    got = plugins[name]
    assert got["error"] is None, got["error"]
    assert got["registered"] == EXPECTED[name], got["registered"]
    from minisgl.plugins import get_registry

    registry = get_registry()
    for kind, names in EXPECTED[name].items():
        for spec_name in names:
            spec = registry.get(kind, spec_name)
            reason = spec.availability(None) if hasattr(spec, "availability") else None
            print(f"{kind} {spec_name}: {'available' if reason is None else 'unavailable: ' + reason}")
    print(f"plugin {name!r} registers through its entry point alone: ok")


if __name__ == "__main__":
    main(sys.argv[1])
