"""Settings: defaults < TOML < environment < flags, every value with its source."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from minisgl.settings import SettingsError, load_settings


def test_precedence_and_sources(tmp_path):
    toml = tmp_path / "minisgl.toml"
    toml.write_text('max_running_requests = 16\nport = 9000\ncache-type = "naive"\n')
    settings, sources = load_settings(
        config=str(toml),
        environ={"PORT": "9100", "SCHEDULER_MODE": "cache_aware", "PREFIX_CACHE": "1"},
        flags={"port": "9200"},
    )
    assert settings.max_running_requests == 16 and sources["max_running_requests"].startswith("config file")
    assert settings.port == 9200 and sources["port"] == "flag --port"
    assert settings.scheduler == "cache_aware" and sources["scheduler"] == "env SCHEDULER_MODE"
    assert settings.cache_type == "naive"
    assert settings.memory_ratio == 0.9 and sources["memory_ratio"] == "default"


def test_seed_env_names_and_conversions():
    settings, _ = load_settings(environ={
        "MODEL_NAME": "smollm2-135m",
        "BACKEND_IMPL": "torch",
        "WARM_PREFIXES": "You are helpful.||Answer briefly:",
        "ZMQ_CONTROL": "1",
        "ADAPTIVE_MAX_NEW_TOKENS_FACTOR": "0.5",
        "DECODE_LOG_STRIDE": "16",
    })
    assert settings.model_path == "smollm2-135m"
    assert settings.backend == "hf"  # torch is an alias of hf
    assert settings.warm_prefixes == ["You are helpful.", "Answer briefly:"]
    assert settings.zmq_control is True
    assert settings.adaptive_max_new_tokens_factor == 0.5
    assert settings.decode_log_stride == 16


def test_model_local_dir_overrides_and_prefix_cache_off_means_naive():
    settings, sources = load_settings(environ={"MODEL_LOCAL_DIR": "/models/x", "PREFIX_CACHE": "0"})
    assert settings.model_path == "/models/x" and sources["model_path"] == "env MODEL_LOCAL_DIR"
    assert settings.cache_type == "naive"


def test_shell_mode_forces_one_request():
    settings, sources = load_settings(flags={"shell_mode": True})
    assert settings.max_running_requests == 1 and settings.cuda_graph_max_bs == 1
    assert sources["max_running_requests"] == "--shell-mode"


@pytest.mark.parametrize(
    ("kwargs", "name", "source"),
    [
        ({"environ": {"TP_SIZE": "two"}}, "tp_size", "env TP_SIZE"),
        ({"flags": {"memory_ratio": "1.5"}}, "memory_ratio", "flag --memory-ratio"),
        ({"flags": {"dtype": "int3"}}, "dtype", "flag --dtype"),
        ({"environ": {"MAX_INFLIGHT_TOTAL": "-1"}}, "max_inflight_total", "env MAX_INFLIGHT_TOTAL"),
    ],
)
def test_invalid_values_name_setting_value_and_source(kwargs, name, source):
    with pytest.raises(SettingsError) as info:
        load_settings(**kwargs)
    assert info.value.name == name and info.value.source == source
    assert name in str(info.value) and source in str(info.value)


def test_unknown_key_in_toml(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("max_runing_requests = 3\n")
    with pytest.raises(SettingsError, match="max_runing_requests"):
        load_settings(config=str(toml))


def _cli(*args, env=None):
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "minisgl", *args], capture_output=True, text=True, env=full, timeout=60)


def test_print_config_shows_value_and_source():
    result = _cli("serve", "--print-config", "--tp-size", "2", "--attn", "triton", env={"SCHEDULER_MODE": "random"})
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "2" in lines["tp_size"] and "flag" in lines["tp_size"]
    assert "'triton'" in lines["attention_backend"]
    assert "env SCHEDULER_MODE" in lines["scheduler"]


def test_cli_errors_exit_2_and_name_the_problem():
    bad_value = _cli("serve", "--max-running-requests", "lots")
    assert bad_value.returncode == 2
    assert "max_running_requests" in bad_value.stderr and "'lots'" in bad_value.stderr
    bad_flag = _cli("serve", "--max-runing-requests", "3")
    assert bad_flag.returncode == 2 and "--max-runing-requests" in bad_flag.stderr
    bad_cmd = _cli("frobnicate")
    assert bad_cmd.returncode == 2 and "frobnicate" in bad_cmd.stderr


def test_generate_with_a_missing_model_or_backend_says_so_without_a_traceback(tmp_path, tiny_qwen3_path):
    result = _cli("generate", "--model-path", str(tmp_path / "nowhere"), "hi")
    assert result.returncode == 1
    assert "no such directory" in result.stderr and "Traceback" not in result.stderr
    bad_backend = _cli("generate", "--model-path", tiny_qwen3_path, "--backend", "tpu", "hi")
    assert bad_backend.returncode == 1 and "Traceback" not in bad_backend.stderr
    assert "unknown backend 'tpu'" in bad_backend.stderr and "hf" in bad_backend.stderr
