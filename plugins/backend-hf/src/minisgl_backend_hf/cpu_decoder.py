"""A lean forward for llama-family decoders on a CPU, over the weights transformers loaded.

transformers' module tree costs a decode step of a small model more than its matmuls: some
sixty small ops a layer (an RMSNorm is eight, rotary embeddings a dozen) and the Python
around them. This forward runs the same layers in about a dozen calls each: RMSNorm and
rotary-embedding-plus-KV-store as native kernels (csrc/decoder_ops.c), the projections as
oneDNN linears with their epilogues fused (SiLU into the gate projection, the multiply by
the gate into the up projection, the residual add into the output and down projections),
attention through the same paged-attention code as the transformers path.

It takes the model only where it computes what transformers computes: llama, mistral,
qwen2 and qwen3 text models with SiLU MLPs, rotary embeddings over whole heads and no
sliding window, on packed linears. Anything else runs transformers' forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .attention import PagedAttentionContext, attend
from .cpu_kernels import DecoderOps
from .cpu_linear import MLP_ROWS, PackedLinear

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

_linear = torch.ops.mkldnn._linear_pointwise


@dataclass
class _Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    q: PackedLinear
    k: PackedLinear
    v: PackedLinear
    o: PackedLinear
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    gate: PackedLinear
    up: PackedLinear
    down: PackedLinear


def unsupported_reason(model: Any) -> str | None:
    """Why the lean forward cannot run `model`, or None when it can."""
    config = model.config
    if config.model_type not in MODEL_TYPES:
        return f"model type {config.model_type!r} (takes {', '.join(MODEL_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "a sliding window"
    decoder = getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None or not hasattr(decoder, "rotary_emb") or not hasattr(decoder, "norm"):
        return f"{type(model).__name__} is not laid out as a llama decoder"
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if not all(isinstance(lin, PackedLinear) for lin in linears):
            return "linear layers not packed for oneDNN"
        if mlp.down_proj.bias is not None or mlp.up_proj.bias is not None:
            return "MLP biases"
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    probe = decoder.rotary_emb(torch.empty(0), torch.zeros(1, 1, dtype=torch.long))[0]
    if probe.shape[-1] != head_dim:
        return "rotary embeddings over part of a head"
    if not isinstance(model.get_output_embeddings(), PackedLinear):
        return "the LM head not packed for oneDNN"
    return None


class CPUDecoder:
    """`run(...)`: the model's forward over one ForwardBatch (its plan already on the
    attention context): the logits of the sampled rows, and the final hidden states summed
    over each pooled span (embeddings)."""

    def __init__(self, model: Any, ops: DecoderOps, context: PagedAttentionContext) -> None:
        decoder = model.model
        config = model.config
        self.ops, self.context = ops, context
        self.embed = decoder.embed_tokens.weight
        self.rotary = decoder.rotary_emb
        self.final_norm = decoder.norm.weight
        self.lm_head: PackedLinear = model.get_output_embeddings()
        self.dtype = self.embed.dtype
        self.eps = float(config.rms_norm_eps)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = float(decoder.layers[0].self_attn.scaling)
        self.layers = [self._layer(layer) for layer in decoder.layers]
        self.gemv_rows = ops.gemv_rows

    def _proj(self, x: torch.Tensor, lin: PackedLinear, epilogue: str = "none",
              other: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[0] <= self.gemv_rows:
            return self.ops.gemv(x, lin.gemv_weight, lin.out_features, lin.bias, epilogue, other)
        if other is None:
            return _linear(x, lin.packed_weight, lin.bias, epilogue, [], "")
        return _linear.binary(x, other, lin.packed_weight, lin.bias, epilogue)

    @staticmethod
    def _layer(layer: Any) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        return _Layer(
            layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
            attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
            None if q_norm is None else q_norm.weight, None if k_norm is None else k_norm.weight,
            mlp.gate_proj, mlp.up_proj, mlp.down_proj,
        )

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [T, D] in float32, holding the values transformers' rounds them to."""
        cos, sin = self.rotary(torch.empty(0, dtype=self.dtype), positions[None])
        return cos[0].float(), sin[0].float()

    def _mlp(self, x: torch.Tensor, residual: torch.Tensor, layer: _Layer) -> torch.Tensor:
        gate = self._proj(x, layer.gate, "swish")
        return self._proj(self._proj(x, layer.up, "mul", gate), layer.down, "add", residual)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor,
            pool_spans: list[tuple[int, int]]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        ops, ctx, eps = self.ops, self.context, self.eps
        plan = ctx.plan
        assert plan is not None
        tokens = input_ids.shape[0]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        cos, sin = self._rope(positions)
        residual = torch.nn.functional.embedding(input_ids, self.embed)
        x = ops.rms_norm(residual, self.layers[0].input_norm, eps)
        for index, layer in enumerate(self.layers):
            q, k, v = self._proj(x, layer.q), self._proj(x, layer.k), self._proj(x, layer.v)
            if layer.q_norm is not None:
                q = ops.rms_norm(q.view(tokens * heads, dim), layer.q_norm, eps)
                k = ops.rms_norm(k.view(tokens * kv_heads, dim), layer.k_norm, eps)
            q, k, v = q.view(tokens, heads, dim), k.view(tokens, kv_heads, dim), v.view(tokens, kv_heads, dim)
            ops.rope_store(q, k, v, cos, sin, plan.out_slots, ctx.pool.k[index], ctx.pool.v[index])
            out = attend(ctx, index, q, k.transpose(0, 1), v.transpose(0, 1), self.scale, None, None)
            residual = self._proj(out.view(tokens, heads * dim), layer.o, "add", residual)
            x = ops.rms_norm(residual, layer.post_norm, eps)
            if tokens <= MLP_ROWS:
                residual = self._mlp(x, residual, layer)
            else:
                residual = torch.cat([self._mlp(xs, rs, layer)
                                      for xs, rs in zip(x.split(MLP_ROWS), residual.split(MLP_ROWS))])
            if index + 1 < len(self.layers):
                x = ops.rms_norm(residual, self.layers[index + 1].input_norm, eps)
        pooled = None
        if pool_spans:
            hidden = ops.rms_norm(residual, self.final_norm, eps)
            pooled = torch.stack([hidden[start:end].float().sum(0) for start, end in pool_spans])
        if rows.numel() == 0:
            return None, pooled
        last = ops.rms_norm(residual.index_select(0, rows), self.final_norm, eps)
        return self._proj(last, self.lm_head), pooled
