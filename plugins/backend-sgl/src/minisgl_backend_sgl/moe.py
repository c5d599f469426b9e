"""Qwen3-MoE's sparse MLP: a router picks each token's top-k experts, and their SiLU-gated
MLPs' outputs are summed with the router's weights (transformers' Qwen3MoeSparseMoeBlock:
softmax in float32, top-k, renormalised when norm_topk_prob).

The experts' weights are stacked, w13 [E, 2I, H] (gate | up) and w2 [E, H, I], filled from
the checkpoint's per-expert tensors. With tensor parallelism every rank keeps all experts
and a slice of their intermediate dimension; the output is summed across ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .kernels.select import KernelSet
from .linear import TPGroup, _attach, _check_divisible, _whole


class MoEBlock(nn.Module):
    def __init__(self, config: ModelConfig, tp: TPGroup | None, **factory) -> None:
        super().__init__()
        moe = config.moe
        assert moe is not None
        self.tp, self.top_k, self.renormalise = tp, moe.top_k, moe.norm_topk_prob
        rank, size = (tp.rank, tp.size) if tp is not None else (0, 1)
        self.inter = _check_divisible(moe.intermediate_size, size, "moe_intermediate_size")
        self.inter_start = rank * self.inter
        self.full_inter = moe.intermediate_size
        e, h = moe.num_experts, config.hidden_size
        self.gate = nn.Linear(h, e, bias=False, **factory)
        self.gate.weight.requires_grad_(False)
        _attach(self.gate.weight, lambda loaded, shard: self.gate.weight.data.copy_(_whole(loaded)))
        self.w13 = _attach(nn.Parameter(torch.empty(e, 2 * self.inter, h, **factory), requires_grad=False), self._load_w13)
        self.w2 = _attach(nn.Parameter(torch.empty(e, h, self.inter, **factory), requires_grad=False), self._load_w2)
        self.w13.shards = [f"{i}.{part}" for i in range(e) for part in (0, 1)]  # type: ignore[attr-defined]
        self.w2.shards = [str(i) for i in range(e)]  # type: ignore[attr-defined]

    def _load_w13(self, loaded: Any, shard: str | int | None) -> None:
        expert, part = (int(v) for v in str(shard).split("."))
        if loaded.shape[0] != self.full_inter:
            raise ValueError(f"expert {expert} {'up' if part else 'gate'}_proj: {loaded.shape[0]} rows, expected {self.full_inter}")
        self.w13.data[expert, part * self.inter : (part + 1) * self.inter].copy_(loaded.narrow(0, self.inter_start, self.inter))

    def _load_w2(self, loaded: Any, shard: str | int | None) -> None:
        expert = int(str(shard))
        if loaded.shape[1] != self.full_inter:
            raise ValueError(f"expert {expert} down_proj: {loaded.shape[1]} columns, expected {self.full_inter}")
        self.w2.data[expert].copy_(loaded.narrow(1, self.inter_start, self.inter))

    def forward(self, x: torch.Tensor, kernels: KernelSet) -> torch.Tensor:
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.renormalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = kernels.fused_moe(x, self.w13, self.w2, weights.to(x.dtype), experts)
        return self.tp.all_reduce(out) if self.tp is not None and self.tp.size > 1 else out
