"""`minisgl launch`: seed 004's TOML contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minisgl.launch import LaunchConfigError, load_config, plan, server_flags

TOML = """
[master]
python_path = "/opt/py/bin/python"

[instance.control]
log_dir = "/var/log/ms"

[instance.server]
host = "127.0.0.1"
tp_size = 1

[instance.small.server]
model_path = "smollm2-135m"
port = 30001
trust_remote_code = true
dummy_weight = false
warm_prefixes = ["a", "b"]
extra_args = ["--print-config"]

[instance.big.control]
gpu_ids = "0,1"
log_file = "/tmp/big.log"
background = false

[instance.big.server]
model_path = "qwen3-8b"
port = 30002
tp_size = 2

[instance.off.control]
enabled = false

[instance.cluster.control]
ray_address = "ray://head:10001"

[instance.cluster.server]
port = 30003
distributed_executor = "ray"
dp_size = 4
"""


@pytest.fixture
def toml_file(tmp_path):
    path = tmp_path / "launch.toml"
    path.write_text(TOML)
    return str(path)


def test_plan_converts_keys_to_flags(toml_file):
    instances = {i.name: i for i in plan(load_config(toml_file, environ={}))}
    assert set(instances) == {"small", "big", "cluster"}
    small = instances["small"]
    assert small.argv[:3] == ["/opt/py/bin/python", "-m", "minisgl.launch_server"]
    assert small.argv[3:] == [
        "--host", "127.0.0.1", "--tp-size", "1", "--model-path", "smollm2-135m", "--port", "30001",
        "--trust-remote-code", "--warm-prefixes", "a", "--warm-prefixes", "b", "--print-config",
    ]
    assert small.log_file == "/var/log/ms/minisgl-small.log" and small.env == {}
    big = instances["big"]
    assert big.env == {"CUDA_VISIBLE_DEVICES": "0,1"} and big.log_file == "/tmp/big.log"
    assert big.background is False and "--tp-size" in big.argv and big.argv[big.argv.index("--tp-size", 4) + 1] == "2"
    cluster = instances["cluster"]  # a server whose replicas are Ray actors on that cluster
    assert cluster.env == {"RAY_ADDRESS": "ray://head:10001"}
    assert cluster.argv[-6:] == ["--port", "30003", "--distributed-executor", "ray", "--dp-size", "4"]


def test_overrides_deep_merge_and_master_switch(toml_file):
    env = {"AUTO_INFER_SGLANG_CONFIG": toml_file,
           "AUTO_INFER_SGLANG_OVERRIDES": json.dumps({"instance": {"small": {"server": {"port": 31000}}}})}
    small = {i.name: i for i in plan(load_config(None, environ=env))}["small"]
    assert small.argv[small.argv.index("--port") + 1] == "31000"
    env["AUTO_INFER_SGLANG_OVERRIDES"] = json.dumps({"master": {"enable": False}})
    assert plan(load_config(None, environ=env)) == []


def test_errors_are_clear(tmp_path):
    with pytest.raises(LaunchConfigError, match="AUTO_INFER_SGLANG_CONFIG"):
        load_config(None, environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[instance\n")
    with pytest.raises(LaunchConfigError, match="not valid TOML"):
        load_config(str(bad), environ={})
    with pytest.raises(LaunchConfigError, match="not valid JSON"):
        load_config(None, environ={"AUTO_INFER_SGLANG_CONFIG": str(_good(tmp_path)),
                                   "AUTO_INFER_SGLANG_OVERRIDES": "{"})
    with pytest.raises(LaunchConfigError, match="extra_args"):
        server_flags({"extra_args": "--x"})


def _good(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text("[instance.a.server]\nport = 1\n")
    return path


def test_launch_starts_a_real_server_process_that_prints_its_config(tmp_path):
    """End to end through the CLI: the instance runs `python -m minisgl.launch_server`."""
    log = tmp_path / "a.log"
    path = tmp_path / "one.toml"
    path.write_text(
        f'[master]\npython_path = "{sys.executable}"\n'
        f'[instance.a.control]\nlog_file = "{log}"\nbackground = false\n'
        '[instance.a.server]\nport = 30555\nmax_running_requests = 7\nextra_args = ["--print-config"]\n'
    )
    result = subprocess.run([sys.executable, "-m", "minisgl", "launch", "--config", str(path)],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    assert "30555" in text and "flag --port" in text
    assert any(line.startswith("max_running_requests") and "7" in line for line in text.splitlines())
