"""The decoder of Llama, Qwen2 and Qwen3 (one code path, switched by ModelConfig flags).

Module and parameter names mirror transformers' checkpoints except for the fused layers
(`qkv_proj` = q|k|v, `gate_up_proj` = gate|up), which weights.py maps onto.
Every layer takes the tensor-parallel group `tp` (None: one rank); sharded layers hold their
rank's slice and call the group's all-reduce or all-gather.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .forward_meta import ForwardMeta
from .kernels.select import KernelSet
from .kv_cache import KVCache
from .linear import ColumnParallelLinear, QKVParallelLinear, RMSNormWeight, RowParallelLinear, TPGroup, VocabEmbedding
from .moe import MoEBlock


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, tp: TPGroup | None, **factory) -> None:
        super().__init__()
        tp_rank, tp_size = (tp.rank, tp.size) if tp is not None else (0, 1)
        self.layer_id = layer_id
        self.head_dim = config.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, config.head_dim, config.num_heads, config.num_kv_heads,
                                          config.qkv_bias, tp_rank=tp_rank, tp_size=tp_size, **factory)
        heads = self.qkv_proj.heads
        self.num_heads, self.num_kv_heads = heads.q_count, heads.kv_count
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.eps = config.rms_norm_eps
        self.o_proj = RowParallelLinear(config.q_size, config.hidden_size, False, tp_rank=tp_rank, tp_size=tp_size, tp=tp,
                                        in_slice=(heads.q_start * self.head_dim, self.q_size), **factory)
        if config.qk_norm:
            self.q_norm = RMSNormWeight(config.head_dim, config.rms_norm_eps, **factory)
            self.k_norm = RMSNormWeight(config.head_dim, config.rms_norm_eps, **factory)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, meta: ForwardMeta, kv: KVCache, cos_sin: torch.Tensor, kernels: KernelSet) -> torch.Tensor:
        n = x.shape[0]
        qkv = self.qkv_proj(x, kernels.linear)
        k_cache, v_cache = kv.layer(self.layer_id)
        kernels.rope_and_store_kv(
            qkv, meta.positions, meta.out_slots, cos_sin, k_cache, v_cache,
            self.num_heads, self.num_kv_heads, self.head_dim,
            self.q_norm.weight if self.q_norm is not None else None,
            self.k_norm.weight if self.k_norm is not None else None,
            self.eps,
        )
        q = qkv[:, : self.q_size].view(n, self.num_heads, self.head_dim)
        attend = kernels.decode_attention if meta.is_decode else kernels.extend_attention
        out = attend(q, k_cache, v_cache, meta)
        return self.o_proj(out.view(n, self.q_size), kernels.linear)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, tp: TPGroup | None, **factory) -> None:
        super().__init__()
        tp_rank, tp_size = (tp.rank, tp.size) if tp is not None else (0, 1)
        self.gate_up_proj = ColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2, False,
                                                 tp_rank=tp_rank, tp_size=tp_size, **factory)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, False,
                                           tp_rank=tp_rank, tp_size=tp_size, tp=tp, **factory)

    def forward(self, x: torch.Tensor, kernels: KernelSet) -> torch.Tensor:
        return self.down_proj(kernels.silu_mul(self.gate_up_proj(x, kernels.linear)), kernels.linear)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, tp: TPGroup | None, **factory) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_id, tp, **factory)
        sparse = config.moe is not None and config.moe.is_sparse(layer_id)
        self.mlp = MoEBlock(config, tp, **factory) if sparse else MLP(config, tp, **factory)
        self.input_layernorm = RMSNormWeight(config.hidden_size, config.rms_norm_eps, **factory)
        self.post_attention_layernorm = RMSNormWeight(config.hidden_size, config.rms_norm_eps, **factory)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, meta: ForwardMeta, kv: KVCache,
                cos_sin: torch.Tensor, kernels: KernelSet) -> tuple[torch.Tensor, torch.Tensor]:
        norm = self.input_layernorm
        if residual is None:  # first layer: the embeddings are the residual stream
            residual = x
            h = kernels.rmsnorm(x, norm.weight, norm.eps)
        else:
            h = kernels.rmsnorm(x, norm.weight, norm.eps, residual)
        h = self.self_attn(h, meta, kv, cos_sin, kernels)
        norm = self.post_attention_layernorm
        h = kernels.rmsnorm(h, norm.weight, norm.eps, residual)
        return self.mlp(h, kernels), residual


class DecoderModel(nn.Module):
    def __init__(self, config: ModelConfig, tp: TPGroup | None, **factory) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, tp=tp, **factory)
        self.layers = nn.ModuleList(DecoderLayer(config, i, tp, **factory) for i in range(config.num_layers))
        self.norm = RMSNormWeight(config.hidden_size, config.rms_norm_eps, **factory)


class CausalLM(nn.Module):
    """Embeddings, decoder layers, final norm and LM head; logits only for the sampled rows."""

    def __init__(self, config: ModelConfig, *, tp: TPGroup | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.config = config
        self.model = DecoderModel(config, tp, **factory)
        self.lm_head = (None if config.tie_word_embeddings
                        else VocabEmbedding(config.vocab_size, config.hidden_size, tp=tp, **factory))

    def projection_weights(self) -> list[torch.Tensor]:
        """The weights the decoder layers' projections multiply by (what KernelSet.linear serves)."""
        return [m.weight for m in self.modules() if isinstance(m, (ColumnParallelLinear, RowParallelLinear))]

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, meta: ForwardMeta, kv: KVCache, cos_sin: torch.Tensor,
                kernels: KernelSet, sample_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [S, V] of the rows in `sample_indices` (all rows when None)."""
        x = self.model.embed_tokens(input_ids)
        residual = None
        for layer in self.model.layers:
            x, residual = layer(x, residual, meta, kv, cos_sin, kernels)
        norm = self.model.norm
        if sample_indices is not None:  # the final norm and LM head run on the sampled rows only
            x, residual = x[sample_indices], residual[sample_indices]
        h = kernels.rmsnorm(x, norm.weight, norm.eps, residual)
        return (self.lm_head or self.model.embed_tokens).logits(h)
