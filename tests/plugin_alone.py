"""Run by `nox -s plugin`: with only the core and ONE plugin distribution installed, the
plugin must register through its entry point alone, its availability probes must answer
(an available backend, or a reason naming what to install), its settings must load with
their defaults, and `minisgl --help` must list its commands (and `serve` only when the
plugin is the server, `bench` only when it is minisgl-bench)."""

from __future__ import annotations

import json
import subprocess
import sys

EXPECTED = {
    "hf": {"backend": ["hf"], "setting": ["matmul_precision", "enable_sdp", "hf_cpu_kernels"]},
    "sgl": {"backend": ["sgl"], "setting": ["attention_backend", "cuda_graph_max_bs", "moe_backend", "disable_pynccl"]},
    "mlx": {
        "backend": ["mlx"],
        "setting": ["mlx_cache_dir", "mlx_trust_remote_code", "mlx_prefill_step_size", "mlx_max_kv_size",
                    "aggressive_max_new_tokens"],
    },
    "diffusion": {
        "runner": ["diffusers-image", "diffusers-video"],
        "setting": ["image_model_id", "video_model_id", "z_image_model_id", "z_image_model_dir", "z_image_cache_dir"],
        "command": ["image"],
        "route": ["images"],
    },
    "bench": {"command": ["bench"]},
    "schedulers": {"queue_policy": ["lpm", "priority"], "dispatch_policy": ["fsfs", "random", "cache_aware"]},
    "server": {
        "setting": ["dp_size", "enable_multi_device", "distributed_executor", "host", "port", "http_header_timeout",
                    "http_body_timeout", "request_timeout", "served_model_name", "server_stream_log_stride",
                    "warm_prefixes", "zmq_control", "zmq_control_endpoint", "max_inflight_total",
                    "max_inflight_per_engine", "adaptive_max_new_tokens", "adaptive_max_inflight_threshold",
                    "adaptive_max_new_tokens_factor", "async_prefill_queue", "metric_window", "max_body_bytes",
                    "drain_timeout_s", "engine_restart_limit", "engine_restart_backoff_s", "watchdog_timeout",
                    "api_key", "responses_store", "responses_store_max"],
        "command": ["serve"],
    },
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
    from minisgl.settings import load_settings

    registry = get_registry()
    settings, _ = load_settings(environ={}, registry=registry)
    help_text = subprocess.run(["minisgl", "--help"], check=True, capture_output=True, text=True).stdout
    commands = [line.split()[0] for line in help_text.split("Commands:")[1].splitlines() if line.strip()]
    assert ("serve" in commands) == (name == "server"), commands
    assert ("bench" in commands) == (name == "bench"), commands
    for kind, names in EXPECTED[name].items():
        for spec_name in names:
            spec = registry.get(kind, spec_name)
            if kind == "setting":
                assert getattr(settings, spec_name) == spec.default, spec_name
            elif kind == "command":
                assert spec_name in commands, commands
            else:
                reason = spec.availability(None) if hasattr(spec, "availability") else None
                print(f"{kind} {spec_name}: {'available' if reason is None else 'unavailable: ' + reason}")
    print(f"plugin {name!r} registers through its entry point alone: ok")


if __name__ == "__main__":
    main(sys.argv[1])
