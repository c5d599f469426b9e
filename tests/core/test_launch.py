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


def _launch(path, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "minisgl", "launch", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def test_a_misspelled_key_is_an_error_naming_the_key_and_its_line(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('[master]\nenable = true\n\n[instance.a.server]\nport = 30556\nmodel_pth = "smollm2-135m"\n'
                    '[instance.a.contrl]\nenabled = true\n')
    result = _launch(path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:6: unknown key 'model_pth'" in result.stderr and "'model_path'" in result.stderr
    assert f"{path}:7: unknown key 'contrl'" in result.stderr
    assert "started" not in result.stdout
    with pytest.raises(LaunchConfigError, match=r":2: enable must be a bool"):
        path.write_text('[master]\nenable = "yes"\n[instance.a.server]\nport = 1\n')
        load_config(str(path), environ={})


def test_nothing_to_launch_is_an_error(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text('[instance.control]\nlog_dir = "/tmp"\n')
    result = _launch(path)
    assert result.returncode == 1 and "nothing to launch" in result.stderr and "[instance.<name>]" in result.stderr
    path.write_text('[instance.a.control]\nenabled = false\n')
    result = _launch(path)
    assert result.returncode == 1 and "every instance is disabled" in result.stderr


def test_a_server_that_dies_at_once_makes_launch_fail_with_its_log(tmp_path):
    log = tmp_path / "dies.log"
    path = tmp_path / "dies.toml"
    path.write_text(f'[master]\npython_path = "{sys.executable}"\n[instance.a.control]\nlog_file = "{log}"\n'
                    '[instance.a.server]\nport = 30557\nextra_args = ["--max-running-requests", "lots"]\n')
    result = _launch(path)
    assert result.returncode == 1
    assert "a exited with code 2" in result.stderr and "max_running_requests" in result.stderr  # the log's last lines
    assert "started a" not in result.stdout


def test_a_good_file_starts_a_server_that_answers_health_and_stops_cleanly(tmp_path, tiny_qwen3_path):
    import signal
    import time

    import httpx
    from server_process import free_port

    port = free_port()
    path = tmp_path / "good.toml"
    path.write_text(
        f'[master]\npython_path = "{sys.executable}"\n'
        f'[instance.control]\nlog_dir = "{tmp_path}"\nbackground = false\n'
        f'[instance.tiny.server]\nmodel_path = "{tiny_qwen3_path}"\nhost = "127.0.0.1"\nport = {port}\n'
        'device = "cpu"\nnum_pages = 2048\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "minisgl", "launch", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("started tiny"):
                break
        assert lines and lines[-1].startswith("started tiny"), "".join(lines) + proc.stderr.read() if proc.poll() else lines
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "stopped tiny" in proc.stdout.read()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_shipped_example_is_a_valid_launch_file():
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "launch.toml")
    result = _launch(example, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("chat: ") and "--model-path smollm2-135m" in result.stdout
