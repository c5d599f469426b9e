"""Pure-python parts of backend-sgl: config parsing, checkpoint name mapping, rope tables."""

from __future__ import annotations

import json

import pytest
import torch

from minisgl.dtypes import resolve_dtype
from minisgl_backend_sgl.config import UnsupportedModelError, load_model_config, parse_model_config
from minisgl_backend_sgl.model import CausalLM
from minisgl_backend_sgl.rope import cos_sin_table, inverse_frequencies
from minisgl_backend_sgl.weights import expected_loads, load_weights, map_weight_name

QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"], "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
    "rms_norm_eps": 1e-6, "max_position_embeddings": 256, "tie_word_embeddings": True, "rope_theta": 1e6,
    "eos_token_id": 7, "torch_dtype": "bfloat16",
}


def test_qwen3_config():
    cfg = parse_model_config(QWEN3, {"eos_token_id": [7, 9]})
    assert (cfg.qk_norm, cfg.qkv_bias, cfg.tie_word_embeddings) == (True, False, True)
    assert (cfg.head_dim, cfg.q_size, cfg.kv_size) == (32, 128, 64)
    assert cfg.eos_token_ids == (7, 9)
    assert cfg.rope.theta == 1e6 and cfg.rope.rope_type == "default"
    assert cfg.dtype == torch.bfloat16
    assert resolve_dtype("auto", cfg, "cuda") == torch.bfloat16 and resolve_dtype("float32", cfg, "cuda") == torch.float32


def test_qwen2_has_qkv_bias_and_llama_defaults():
    qwen2 = parse_model_config({**QWEN3, "architectures": ["Qwen2ForCausalLM"], "head_dim": None})
    assert qwen2.qkv_bias and not qwen2.qk_norm and qwen2.head_dim == 16  # hidden / heads
    llama = parse_model_config({**QWEN3, "architectures": ["LlamaForCausalLM"], "num_key_value_heads": None})
    assert not llama.qkv_bias and not llama.qk_norm and llama.num_kv_heads == 4


def test_transformers5_rope_parameters_and_llama3_scaling():
    raw = {**QWEN3, "architectures": ["LlamaForCausalLM"]}
    del raw["rope_theta"]
    raw["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = parse_model_config(raw)
    assert cfg.rope.theta == 500000.0 and cfg.rope.rope_type == "llama3" and cfg.rope.factor == 8.0


@pytest.mark.parametrize("bad,match", [
    ({"architectures": ["MixtralForCausalLM"]}, "backend-sgl implements"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"num_key_value_heads": 3}, "not a multiple"),
    ({"hidden_act": "gelu"}, "silu"),
])
def test_unsupported_configs_name_the_field(bad, match):
    with pytest.raises(UnsupportedModelError, match=match):
        parse_model_config({**QWEN3, **bad})


def test_load_model_config_reads_generation_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN3))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 11]}))
    assert load_model_config(tmp_path).eos_token_ids == (7, 11)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model_config(tmp_path / "missing")


def test_weight_name_mapping():
    assert map_weight_name("model.layers.3.self_attn.q_proj.weight", False) == ("model.layers.3.self_attn.qkv_proj.weight", "q")
    assert map_weight_name("model.layers.3.self_attn.v_proj.bias", False) == ("model.layers.3.self_attn.qkv_proj.bias", "v")
    assert map_weight_name("model.layers.0.mlp.up_proj.weight", False) == ("model.layers.0.mlp.gate_up_proj.weight", 1)
    assert map_weight_name("model.layers.0.mlp.down_proj.weight", False) == ("model.layers.0.mlp.down_proj.weight", None)
    assert map_weight_name("model.layers.0.self_attn.q_norm.weight", False) == ("model.layers.0.self_attn.q_norm.weight", None)
    assert map_weight_name("lm_head.weight", True) is None
    assert map_weight_name("lm_head.weight", False) == ("lm_head.weight", None)
    assert map_weight_name("model.layers.0.self_attn.rotary_emb.inv_freq", False) is None


def _checkpoint(cfg_raw: dict) -> dict[str, torch.Tensor]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(cfg_raw["architectures"][0].replace("ForCausalLM", "").lower(), **{
        k: v for k, v in cfg_raw.items() if k not in ("architectures", "torch_dtype")})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).state_dict()


def test_fused_layers_hold_the_checkpoint_slices():
    cfg = parse_model_config(QWEN3)
    state = _checkpoint(QWEN3)
    model = CausalLM(cfg, dtype=torch.float32)
    load_weights(model, iter(state.items()), cfg.tie_word_embeddings)
    attn = model.model.layers[1].self_attn.qkv_proj.weight
    torch.testing.assert_close(attn[: cfg.q_size], state["model.layers.1.self_attn.q_proj.weight"])
    torch.testing.assert_close(attn[cfg.q_size + cfg.kv_size :], state["model.layers.1.self_attn.v_proj.weight"])
    gate_up = model.model.layers[0].mlp.gate_up_proj.weight
    torch.testing.assert_close(gate_up[cfg.intermediate_size :], state["model.layers.0.mlp.up_proj.weight"])
    assert model.lm_head is None and model.lm_head_weight is model.model.embed_tokens.weight


def test_missing_and_unknown_tensors_are_errors():
    cfg = parse_model_config(QWEN3)
    state = _checkpoint(QWEN3)
    model = CausalLM(cfg, dtype=torch.float32)
    partial = {k: v for k, v in state.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(KeyError, match=r"missing 1 tensors: model.layers.1.mlp.gate_up_proj.weight\[1\]"):
        load_weights(model, iter(partial.items()), True)
    with pytest.raises(KeyError, match="no parameter"):
        load_weights(model, iter([("model.layers.9.mlp.down_proj.weight", torch.zeros(1))]), True)
    assert ("model.layers.0.self_attn.qkv_proj.weight", "k") in expected_loads(model)


def test_tensor_parallel_sharding_keeps_each_rank_slice():
    from minisgl_backend_sgl.linear import QKVParallelLinear, RowParallelLinear

    q, k = torch.randn(8 * 4, 16), torch.randn(4 * 4, 16)
    layer = QKVParallelLinear(16, 4, 8, 4, False, tp_rank=1, tp_size=2, dtype=torch.float32)
    layer.weight.weight_loader(q, "q")
    layer.weight.weight_loader(k, "k")
    torch.testing.assert_close(layer.weight[:16], q[16:])
    torch.testing.assert_close(layer.weight[16:24], k[8:])
    row = RowParallelLinear(32, 8, False, tp_rank=1, tp_size=4, dtype=torch.float32)
    w = torch.randn(8, 32)
    row.weight.weight_loader(w, None)
    torch.testing.assert_close(row.weight, w[:, 8:16])
    with pytest.raises(ValueError, match="divisible by tp_size"):
        RowParallelLinear(30, 8, False, tp_size=4)


@pytest.mark.parametrize("rope_parameters", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
])
def test_rope_frequencies_match_transformers(rope_parameters):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=128, rope_parameters=rope_parameters)
    cfg = parse_model_config({**QWEN3, "architectures": ["LlamaForCausalLM"], "head_dim": 32, "rope_parameters": rope_parameters})
    ours = inverse_frequencies(32, cfg.rope)
    rope_type = rope_parameters["rope_type"]
    if rope_type == "default":
        ref = 1.0 / (rope_parameters["rope_theta"] ** (torch.arange(0, 32, 2, dtype=torch.int64).float() / 32))
    else:
        ref, scale = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
        assert scale == 1.0
    torch.testing.assert_close(ours, ref)
    table = cos_sin_table(32, cfg.rope, 10)
    assert table.shape == (10, 32)
    torch.testing.assert_close(table[3, :16], torch.cos(3 * ours))
