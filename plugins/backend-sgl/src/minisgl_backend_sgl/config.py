"""What backend-sgl needs to know about a model, read straight from its config.json.

One decoder family covers Llama (SmolLM2, Llama 3), Qwen2, Qwen3 and Qwen3-MoE: they differ
only in biases on q/k/v (Qwen2), per-head RMSNorm on q and k (Qwen3), tied embeddings, the
rotary scaling, and (Qwen3-MoE) sparse MLPs of routed experts. Reading the JSON ourselves keeps this independent of transformers' version
(transformers 5 moves `rope_theta` into `rope_parameters`; older files keep it at the top).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minisgl.dtypes import DTYPES

# architecture name -> (q/k/v bias by default, per-head q/k norm)
SUPPORTED_ARCHITECTURES: dict[str, tuple[bool, bool]] = {
    "LlamaForCausalLM": (False, False),
    "Qwen2ForCausalLM": (True, False),
    "Qwen3ForCausalLM": (False, True),
    "Qwen3MoeForCausalLM": (False, True),
}
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")



class UnsupportedModelError(ValueError):
    """The model's architecture or one of its options is outside what backend-sgl implements."""


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class MoEConfig:
    """Qwen3-MoE's sparse MLPs: `num_experts` SiLU-gated experts of `intermediate_size`, of
    which the router's top `top_k` (softmax weights, renormalised when `norm_topk_prob`) run."""

    num_experts: int
    top_k: int
    intermediate_size: int
    norm_topk_prob: bool
    sparse_step: int = 1
    dense_layers: tuple[int, ...] = ()  # mlp_only_layers

    def is_sparse(self, layer: int) -> bool:
        return layer not in self.dense_layers and (layer + 1) % self.sparse_step == 0


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    rope: RopeConfig
    eos_token_ids: tuple[int, ...]
    dtype: torch.dtype | None  # the checkpoint's, as saved (what minisgl.dtypes' `--dtype auto` starts from)
    moe: MoEConfig | None = None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied; every expert)."""
        attention = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        total = 0
        for layer in range(self.num_layers):
            if self.moe is not None and self.moe.is_sparse(layer):
                mlp = self.moe.num_experts * (3 * self.hidden_size * self.moe.intermediate_size + self.hidden_size)
            else:
                mlp = 3 * self.hidden_size * self.intermediate_size
            total += attention + mlp + 2 * self.hidden_size
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return total + embed + self.hidden_size


def _rope(raw: dict[str, Any]) -> RopeConfig:
    # transformers 5 writes `rope_parameters` (theta inside); older configs `rope_theta` + `rope_scaling`
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", raw.get("rope_theta", 10000.0))
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope_type {rope_type!r} is not implemented in backend-sgl (supported: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)}); use --backend hf"
        )
    return RopeConfig(
        theta=float(theta),
        rope_type=rope_type,
        factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(merged.get("original_max_position_embeddings", 8192)),
    )


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def parse_model_config(raw: dict[str, Any], generation: dict[str, Any] | None = None) -> ModelConfig:
    """A ModelConfig from config.json's dict (and generation_config.json's, for EOS ids)."""
    archs = raw.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise UnsupportedModelError(
            f"architectures {archs or raw.get('model_type')!r}: backend-sgl implements "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}; use --backend hf for other models"
        )
    default_bias, qk_norm = SUPPORTED_ARCHITECTURES[arch]
    if raw.get("mlp_bias"):
        raise UnsupportedModelError("mlp_bias=true is not implemented in backend-sgl; use --backend hf")
    if raw.get("use_sliding_window"):
        raise UnsupportedModelError("use_sliding_window=true is not implemented in backend-sgl; use --backend hf")
    if raw.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act {raw.get('hidden_act')!r}: backend-sgl implements silu only")
    num_heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    head_dim = raw.get("head_dim") or hidden // num_heads
    num_kv_heads = int(raw.get("num_key_value_heads") or num_heads)
    if num_heads % num_kv_heads:
        raise UnsupportedModelError(f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_kv_heads}")
    eos = _ids(raw.get("eos_token_id")) + _ids((generation or {}).get("eos_token_id"))
    dtype_name = raw.get("dtype") or raw.get("torch_dtype")
    return ModelConfig(
        architecture=arch,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=int(head_dim),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=bool(raw.get("attention_bias", default_bias)),
        qk_norm=qk_norm,
        rope=_rope(raw),
        eos_token_ids=tuple(dict.fromkeys(eos)),
        dtype=DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None,
        moe=_moe(raw) if arch == "Qwen3MoeForCausalLM" else None,
    )


def _moe(raw: dict[str, Any]) -> MoEConfig:
    if raw.get("shared_expert_intermediate_size"):
        raise UnsupportedModelError("shared experts are not implemented in backend-sgl; use --backend hf")
    return MoEConfig(
        num_experts=int(raw.get("num_experts") or raw["num_local_experts"]),  # transformers 5 writes the latter
        top_k=int(raw["num_experts_per_tok"]),
        intermediate_size=int(raw["moe_intermediate_size"]),
        norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
        sparse_step=int(raw.get("decoder_sparse_step", 1) or 1),
        dense_layers=tuple(int(i) for i in raw.get("mlp_only_layers") or ()),
    )


def load_model_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model directory {str(path)!r} has no config.json")
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    gen_file = path / "generation_config.json"
    generation = json.loads(gen_file.read_text(encoding="utf-8")) if gen_file.is_file() else None
    return parse_model_config(raw, generation)
