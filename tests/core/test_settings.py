"""Settings: defaults < TOML < environment < flags, every value with its source."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import Annotated

import msgspec
import pytest

from minisgl.hookspecs import hookimpl
from minisgl.plugins import Registry
from minisgl.settings import Settings, SettingsError, load_settings, settings_from_kwargs
from minisgl.specs import SettingSpec


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
    assert settings.max_running_requests == 1  # backend-sgl caps its CUDA graphs at this
    assert sources["max_running_requests"] == "--shell-mode"


class _Toy:
    """A plugin that declares its own knobs, as backend-mlx or a third party does."""

    @hookimpl
    def minisgl_register_settings(self, register):
        register(SettingSpec(name="toy_steps", type=Annotated[int, msgspec.Meta(ge=1)], default=4,
                             env=("TOY_STEPS",), flags=("--toy-steps",), help="toy steps"))
        register(SettingSpec(name="toy_turbo", type=bool, default=False, env=("TOY_TURBO",),
                             unsupported="turbo is not built yet"))


def _toy_registry() -> Registry:
    registry = Registry()
    registry.add_plugin(_Toy(), "toy")
    return registry


def test_a_plugin_setting_loads_from_env_and_flags_and_reads_as_an_attribute():
    registry = _toy_registry()
    settings, sources = load_settings(environ={"TOY_STEPS": "8"}, registry=registry)
    assert settings.toy_steps == 8 and sources["toy_steps"] == "env TOY_STEPS"
    settings, sources = load_settings(environ={"TOY_STEPS": "8"}, flags={"toy_steps": "16"}, registry=registry)
    assert settings.toy_steps == 16 and sources["toy_steps"] == "flag --toy-steps"
    assert settings_from_kwargs(model="x", toy_steps=2, registry=registry).toy_steps == 2
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"TOY_STEPS": "0"}, registry=registry)
    assert (info.value.name, info.value.source) == ("toy_steps", "env TOY_STEPS")
    # plugin values travel with the settings to engine processes (spawn pickles them)
    assert pickle.loads(pickle.dumps(settings)).toy_steps == 16
    with pytest.raises(AttributeError, match="no setting 'toy_stpes'"):
        settings.toy_stpes  # noqa: B018


def test_real_plugin_settings_keep_the_seed_names():
    settings = settings_from_kwargs(model="x", mlx_prefill_step_size=4)
    assert settings.mlx_prefill_step_size == 4 and settings.plugin_values["mlx_prefill_step_size"] == 4
    settings, sources = load_settings(environ={"IMAGE_MODEL_ID": "a/b", "CUDA_GRAPH_MAX_BS": "0"})
    assert settings.image_model_id == "a/b" and settings.cuda_graph_max_bs == 0
    assert "mlx_prefill_step_size" not in Settings.__struct_fields__  # the core carries no plugin knob
    assert "port" not in Settings.__struct_fields__ and Settings().port == 1919  # the server's
    assert Settings().mlx_prefill_step_size == 2048  # built by hand: the declared default


def test_vision_settings_keep_the_seed_names():
    env = {"VLM_BACKEND": "hf", "VLM_MODEL_NAME": "llava", "VLM_IMAGE_TOKEN": "<img>", "VLM_IMAGE_HTTP_TIMEOUT_S": "2.5",
           "VLM_MAX_IMAGE_BYTES": "1000", "ALLOW_FILE_IMAGE_URL": "1", "VLM_STREAM_LOG_STRIDE": "4"}
    s, _ = load_settings(environ=env)
    assert (s.vlm_backend, s.vlm_model_name, s.vlm_image_token, s.vlm_image_http_timeout_s, s.vlm_max_image_bytes,
            s.allow_file_image_url, s.vlm_stream_log_stride) == ("hf", "llava", "<img>", 2.5, 1000, True, 4)
    with pytest.raises(SettingsError, match="VLM_MAX_IMAGE_BYTES"):
        load_settings(environ={"VLM_MAX_IMAGE_BYTES": "0"})


@pytest.mark.parametrize(
    ("kwargs", "name", "source"),
    [
        ({"environ": {"TOY_TURBO": "1"}}, "toy_turbo", "env TOY_TURBO"),
        ({"environ": {"DISABLE_PYNCCL": "0"}}, "disable_pynccl", "env DISABLE_PYNCCL"),
        ({"flags": {"fast_stream_decode": False}}, "fast_stream_decode", "flag --fast-stream-decode"),
    ],
)
def test_an_unsupported_setting_is_refused_naming_itself_its_source_and_why(kwargs, name, source):
    registry = _toy_registry() if name.startswith("toy") else None  # else the installed plugins
    with pytest.raises(SettingsError) as info:
        load_settings(registry=registry, **kwargs)
    assert info.value.name == name and info.value.source == source
    assert "not supported" in str(info.value) and name in str(info.value)
    # the default is accepted from anywhere
    load_settings(environ={"TOY_TURBO": "0", "MOE_BACKEND": "auto", "DISABLE_PYNCCL": "1", "FAST_STREAM_DECODE": "1"},
                  registry=registry)


def test_a_setting_declared_twice_is_the_second_plugins_error():
    class Again:
        @hookimpl
        def minisgl_register_settings(self, register):
            register(SettingSpec(name="toy_steps", type=int, default=1))

    class ShadowsCore:
        @hookimpl
        def minisgl_register_settings(self, register):
            register(SettingSpec(name="tp_size", type=int, default=1))

    registry = _toy_registry()
    again = registry.add_plugin(Again(), "again")
    shadow = registry.add_plugin(ShadowsCore(), "shadow")
    assert "setting 'toy_steps' is already registered by plugin 'toy'" in again.error
    assert "setting 'tp_size' is already registered by plugin 'core'" in shadow.error
    assert registry.plugins["toy"].ok and registry.owner[("setting", "toy_steps")] == "toy"


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


def test_print_config_shows_value_owner_and_source():
    result = _cli("serve", "--print-config", "--tp-size", "2", "--attn", "triton", "--dp-size", "3",
                  env={"SCHEDULER_MODE": "random", "MLX_MAX_KV_SIZE": "64", "WARM_PREFIXES": "a||b"})
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split(maxsplit=3)[1:] for line in result.stdout.splitlines()}
    assert rows["tp_size"] == ["2", "core", "flag --tensor-parallel-size"]
    assert rows["attention_backend"] == ["'triton'", "sgl", "flag --attention-backend"]
    assert rows["scheduler"] == ["'random'", "core", "env SCHEDULER_MODE"]
    assert rows["mlx_max_kv_size"] == ["64", "mlx", "env MLX_MAX_KV_SIZE"]
    assert rows["image_model_id"] == ["None", "diffusion", "default"]
    assert rows["dp_size"] == ["3", "server", "flag --data-parallel-size"]
    assert rows["port"] == ["1919", "server", "default"]
    warm = next(line for line in result.stdout.splitlines() if line.startswith("warm_prefixes"))
    assert "['a', 'b']" in warm and warm.split()[-3:] == ["server", "env", "WARM_PREFIXES"]


def test_help_lists_plugin_commands_without_importing_torch():
    code = (
        "import sys; from click.testing import CliRunner; from minisgl.cli import cli; "
        "names = [line.split()[0] for line in CliRunner().invoke(cli, ['--help']).output.splitlines() if line.strip()]; "
        "print('serve' in names, 'image' in names, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "False"]


def test_a_command_whose_plugin_is_missing_says_what_to_install():
    result = _cli("serve", "--port", "1", env={"MINISGL_PLUGINS": "core,hf"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "Error: minisgl serve needs the server: pip install minisgl-server"
    listed = [line.split()[0] for line in _cli("--help", env={"MINISGL_PLUGINS": "core,hf"}).stdout.splitlines() if line.strip()]
    assert "generate" in listed and "serve" not in listed


def test_bench_without_its_plugin_says_what_to_install():
    result = _cli("bench", "offline", "--model", "x", env={"MINISGL_PLUGINS": "core"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "Error: minisgl bench needs the benchmarks: pip install minisgl-bench"


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
