"""One CLI vocabulary: the shared flags come from the settings declarations, with vLLM's and
sglang's names as aliases, defaults in --help, and each command listing only what it uses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SERVER_ONLY = ("--dp-size", "--api-key", "--max-body-bytes", "--host", "--served-model-name", "--warm-prefixes",
               "--drain-timeout", "--image-model")


def _cli(*args, env=None):
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "minisgl", *args], capture_output=True, text=True, env=full, timeout=60)


def _setting(output: str, name: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.startswith(name + " "))


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_generate_and_chat_help_list_engine_flags_with_defaults_and_no_server_flags(command):
    result = _cli(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # undo click's line wrapping
    for flag in SERVER_ONLY:
        assert flag not in text.split(), flag
    assert "--model-path, --model" in text and "--max-model-len" in text and "--device" in text
    assert "[default: auto; env DEVICE]" in text and "[default: 1; env TP_SIZE]" in text
    assert "--max-new-tokens, --max-tokens INTEGER RANGE tokens to generate [default:" in text


def test_serve_help_shows_every_flag_with_its_default():
    text = " ".join(_cli("serve", "--help").stdout.split())
    assert "--dp-size" in text and "--api-key" in text
    assert "[default: 256; env MAX_RUNNING_REQUESTS]" in text and "[default: 1919; env PORT]" in text


@pytest.mark.parametrize("flag", ["--max-seq-len-override", "--max-model-len", "--context-length"])
def test_context_length_aliases_set_the_same_setting(flag):
    result = _cli("generate", "--print-config", flag, "777", "x")
    assert result.returncode == 0, result.stderr
    assert _setting(result.stdout, "max_seq_len_override")[1] == "777"


@pytest.mark.parametrize("flag", ["--model", "--model-path"])
@pytest.mark.parametrize("command", ["serve", "generate", "chat"])
def test_model_and_model_path_are_one_flag(command, flag):
    args = [command, "--print-config", flag, "smollm2-135m"] + (["x"] if command == "generate" else [])
    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    assert _setting(result.stdout, "model_path")[1] == "'smollm2-135m'"


def test_log_level_is_case_insensitive_from_flags_and_environment():
    assert _setting(_cli("serve", "--print-config", "--log-level", "debug").stdout, "log_level")[1] == "'DEBUG'"
    from_env = _cli("serve", "--print-config", env={"MINISGL_LOG_LEVEL": "warning"})
    assert _setting(from_env.stdout, "log_level")[1] == "'WARNING'", from_env.stderr
    bad = _cli("serve", "--print-config", "--log-level", "loud")
    assert bad.returncode == 2 and "--log-level" in bad.stderr


def test_a_server_only_flag_on_generate_names_the_flag():
    result = _cli("generate", "--dp-size", "2", "x")
    assert result.returncode == 2 and "--dp-size" in result.stderr


@pytest.mark.parametrize("url_flag", ["--base-url", "--url"])
@pytest.mark.parametrize("count_flag", ["--num-prompts", "--num-requests"])
def test_bench_serving_takes_either_spelling(url_flag, count_flag):
    from server_process import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = _cli("bench", "serving", url_flag, url, count_flag, "2")
    assert result.returncode == 1 and f"no OpenAI-compatible server answers at {url}" in result.stderr, result.stderr


def test_bench_commands_take_model_and_model_path():
    for command in ("offline", "grammar", "host", "suite", "serving", "vllm", "contention"):
        text = " ".join(_cli("bench", command, "--help").stdout.split())
        assert "--model-path" in text and "--model" in text, command
        assert "--json" in text and "--output" in text or command in ("grammar", "host"), command
