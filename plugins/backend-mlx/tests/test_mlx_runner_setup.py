"""Loading, the knobs (MLX_MAX_KV_SIZE, MLX_PREFILL_STEP_SIZE, MLX_CACHE_DIR), the probe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from minisgl_backend_mlx.probe import INSTALL_HINT as MLX_MISSING

pytest.importorskip("mlx.core", reason=MLX_MISSING)
pytest.importorskip("mlx_lm", reason=MLX_MISSING)

import torch
from mlx_harness import Request, SlotAllocator, make_batch, make_runner, random_tokens
from transformers import AutoModelForCausalLM

from minisgl.engine.batch import ModelRunner
from minisgl.settings import Settings
from minisgl_backend_mlx.probe import probe
from minisgl_backend_mlx.weights import legacy_rope_config


def test_runner_satisfies_the_seam(tiny_qwen3_path):
    runner = make_runner(tiny_qwen3_path, num_pages=64, page_size=4)
    assert isinstance(runner, ModelRunner)
    assert runner.kv_capacity() == 256
    assert runner.device == torch.device("cpu")
    assert runner.max_context_len == 4096
    assert runner.eos_token_ids and runner.vocab_size > 900
    runner.shutdown()


def test_max_kv_size_caps_the_pool_to_whole_pages(tiny_qwen3_path):
    runner = make_runner(tiny_qwen3_path, num_pages=64, page_size=4, mlx_max_kv_size=50)
    assert runner.kv_capacity() == 48
    runner = make_runner(tiny_qwen3_path, num_pages=None, mlx_max_kv_size=300, max_running_requests=4)
    assert runner.kv_capacity() == 300


def test_max_kv_size_below_one_page_is_a_clear_error(tiny_qwen3_path):
    with pytest.raises(RuntimeError, match="MLX_MAX_KV_SIZE"):
        make_runner(tiny_qwen3_path, num_pages=8, page_size=16, mlx_max_kv_size=10)


def test_pool_size_from_memory_never_exceeds_what_the_scheduler_can_use(tiny_qwen3_path):
    runner = make_runner(tiny_qwen3_path, num_pages=None, max_running_requests=2, max_seq_len_override=100)
    assert runner.kv_capacity() == 200


def test_prefill_step_size_is_exposed(tiny_qwen3_path):
    assert make_runner(tiny_qwen3_path, mlx_prefill_step_size=333).max_prefill_tokens == 333


def test_dummy_weights_are_random_and_reproducible(tiny_llama_path):
    tokens = random_tokens(6, 900, seed=1)
    logits = []
    for _ in range(2):
        runner = make_runner(tiny_llama_path, dummy=True)
        logits.append(runner.compute_logits(make_batch(SlotAllocator(512), [(Request(), tokens)])))
    real = make_runner(tiny_llama_path).compute_logits(make_batch(SlotAllocator(512), [(Request(), tokens)]))
    torch.testing.assert_close(logits[0], logits[1], atol=0, rtol=0)
    assert not torch.allclose(logits[0], real, atol=1e-3)


def test_checkpoint_without_safetensors_is_converted_once_into_the_cache(tiny_llama_path, tmp_path):
    source = tmp_path / "bin-model"
    source.mkdir()
    for file in Path(tiny_llama_path).glob("*.json"):
        shutil.copy(file, source / file.name)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    torch.save(ref.state_dict(), source / "pytorch_model.bin")
    cache = tmp_path / "mlx-cache"

    runner = make_runner(str(source), mlx_cache_dir=str(cache))
    (entry,) = cache.iterdir()
    assert any(entry.glob("model*.safetensors"))
    tokens = random_tokens(8, runner.vocab_size, seed=2)
    got = runner.compute_logits(make_batch(SlotAllocator(512), [(Request(), tokens)], every_row=True))
    with torch.inference_mode():
        want = ref(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)

    stamp = next(entry.glob("model*.safetensors")).stat().st_mtime_ns
    make_runner(str(source), mlx_cache_dir=str(cache))  # second load: straight from the cache
    assert [p.name for p in cache.iterdir()] == [entry.name]
    assert next(entry.glob("model*.safetensors")).stat().st_mtime_ns == stamp


def test_transformers5_rope_parameters_reach_mlx_lm(tiny_llama_path):
    config = json.loads((Path(tiny_llama_path) / "config.json").read_text())
    assert legacy_rope_config(config) == {"rope_theta": 500_000.0}
    llama3 = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}
    assert legacy_rope_config(llama3) == {"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    assert legacy_rope_config({"rope_theta": 1e4}) == {}


def test_probe_auto_only_on_apple_silicon_but_explicit_works(monkeypatch):
    import minisgl_backend_mlx.probe as probe_module

    monkeypatch.setattr(probe_module.platform, "system", lambda: "Linux")
    monkeypatch.setattr(probe_module.platform, "machine", lambda: "x86_64")
    assert "Apple silicon" in probe(Settings(backend="auto"))
    assert probe(Settings(backend="mlx")) is None
    monkeypatch.setattr(probe_module.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(probe_module.platform, "machine", lambda: "arm64")
    assert probe(Settings(backend="auto")) is None


def test_device_that_mlx_lacks_is_a_clear_error(tiny_qwen3_path):
    import mlx.core as mx

    if mx.is_available(mx.gpu):
        pytest.skip("this machine has an mlx GPU")
    with pytest.raises(ValueError, match="--device cuda"):
        make_runner(tiny_qwen3_path, device="cuda")
