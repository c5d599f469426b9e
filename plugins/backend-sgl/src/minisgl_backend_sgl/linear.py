"""Linear layers laid out for tensor parallelism (Megatron style), run with tp_size = 1 today.

Column-parallel layers split their output features across ranks, row-parallel layers their
input features (their partial outputs are summed across ranks by an all-reduce, which comes
with the NCCL step). Each parameter carries a `weight_loader` that takes the full checkpoint
tensor and keeps this rank's slice, so loading code never needs to know the layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

WeightLoader = Callable[[torch.Tensor, "str | int | None"], None]


def _check_divisible(total: int, tp_size: int, what: str) -> int:
    if total % tp_size:
        raise ValueError(f"{what}={total} is not divisible by tp_size={tp_size}")
    return total // tp_size


def _attach(param: nn.Parameter, loader: WeightLoader) -> nn.Parameter:
    param.weight_loader = loader  # type: ignore[attr-defined]
    return param


class ColumnParallelLinear(nn.Module):
    """y = x W^T (+ b) with W's rows (outputs) made of shards, each split across ranks.

    `shard_sizes` are the full output sizes of the fused parts (q, k, v or gate, up); the
    rank keeps 1/tp_size of each part, so a fused layer stays fused after sharding.
    """

    def __init__(self, in_features: int, shard_sizes: list[int], bias: bool, *, tp_rank: int = 0, tp_size: int = 1,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.local_sizes = [_check_divisible(s, tp_size, "output features") for s in shard_sizes]
        self.offsets = [sum(self.local_sizes[:i]) for i in range(len(self.local_sizes))]
        out_local = sum(self.local_sizes)
        self.weight = _attach(nn.Parameter(torch.empty(out_local, in_features, dtype=dtype, device=device), requires_grad=False),
                              self._loader("weight"))
        self.bias = (_attach(nn.Parameter(torch.empty(out_local, dtype=dtype, device=device), requires_grad=False),
                             self._loader("bias")) if bias else None)

    def shard_index(self, shard_id: str | int | None) -> int:
        return 0 if shard_id is None else int(shard_id)

    def _loader(self, which: str) -> WeightLoader:
        def load(loaded: torch.Tensor, shard_id: str | int | None) -> None:
            i = self.shard_index(shard_id)
            size = self.local_sizes[i]
            if loaded.shape[0] != size * self.tp_size:
                raise ValueError(f"{which} shard {shard_id!r}: checkpoint has {loaded.shape[0]} rows, expected {size * self.tp_size}")
            part = loaded.narrow(0, self.tp_rank * size, size)
            getattr(self, which).data.narrow(0, self.offsets[i], size).copy_(part)

        return load

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections fused into one matmul; shard ids 'q', 'k', 'v'."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool, **kw) -> None:
        super().__init__(hidden_size, [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], bias, **kw)

    def shard_index(self, shard_id: str | int | None) -> int:
        return {"q": 0, "k": 1, "v": 2}[str(shard_id)]


class RowParallelLinear(nn.Module):
    """y = x W^T (+ b) with W's columns (inputs) split across ranks; outputs need an all-reduce
    over ranks when tp_size > 1, and only rank 0 adds the bias."""

    def __init__(self, in_features: int, out_features: int, bias: bool, *, tp_rank: int = 0, tp_size: int = 1,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.in_local = _check_divisible(in_features, tp_size, "input features")
        self.weight = _attach(nn.Parameter(torch.empty(out_features, self.in_local, dtype=dtype, device=device), requires_grad=False),
                              self._load_weight)
        self.bias = (_attach(nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False),
                             self._load_bias) if bias else None)

    def _load_weight(self, loaded: torch.Tensor, shard_id: str | int | None) -> None:
        if loaded.shape[1] != self.in_local * self.tp_size:
            raise ValueError(f"weight: checkpoint has {loaded.shape[1]} columns, expected {self.in_local * self.tp_size}")
        self.weight.data.copy_(loaded.narrow(1, self.tp_rank * self.in_local, self.in_local))

    def _load_bias(self, loaded: torch.Tensor, shard_id: str | int | None) -> None:
        self.bias.data.copy_(loaded if self.tp_rank == 0 else torch.zeros_like(loaded))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class VocabEmbedding(nn.Module):
    """Token embeddings; with tensor parallelism the vocabulary rows would be split across ranks."""

    def __init__(self, vocab_size: int, hidden_size: int, *, dtype: torch.dtype | None = None,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.weight = _attach(nn.Parameter(torch.empty(vocab_size, hidden_size, dtype=dtype, device=device), requires_grad=False),
                              self._load)

    def _load(self, loaded: torch.Tensor, shard_id: str | int | None) -> None:
        if tuple(loaded.shape) != tuple(self.weight.shape):
            raise ValueError(f"embedding: checkpoint shape {tuple(loaded.shape)}, expected {tuple(self.weight.shape)}")
        self.weight.data.copy_(loaded)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNormWeight(nn.Module):
    """Holds an RMSNorm weight; the kernel that applies it is chosen by the runner."""

    def __init__(self, size: int, eps: float, *, dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _attach(nn.Parameter(torch.empty(size, dtype=dtype, device=device), requires_grad=False), self._load)

    def _load(self, loaded: torch.Tensor, shard_id: str | int | None) -> None:
        self.weight.data.copy_(loaded)
