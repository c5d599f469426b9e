"""Linear layers laid out for tensor parallelism (Megatron style).

Column-parallel layers split their output features across ranks, row-parallel layers their
input features (their partial outputs are summed across ranks by the group's all-reduce);
the vocabulary is split by rows (the embedding sums its ranks' lookups, the LM head gathers
its ranks' logits). Attention heads go to ranks in whole KV groups (HeadSplit); where a
model has fewer KV heads than ranks, each KV head is replicated on the ranks that share it. Each parameter carries a `weight_loader` that takes the
checkpoint tensor (a torch tensor, or a CheckpointTensor not read yet) and keeps this
rank's slice, so loading code never needs to know the layout and a rank reads only its part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

WeightLoader = Callable[[Any, "str | int | None"], None]
Linear = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]  # (x, weight, bias): F.linear's


class TPGroup(Protocol):
    """The collectives a sharded layer needs (minisgl_backend_sgl.tp.TensorParallel)."""

    rank: int
    size: int

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor: ...

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor: ...


def _whole(loaded: Any) -> torch.Tensor:
    """All of a checkpoint tensor (one not read yet is read now)."""
    return loaded if isinstance(loaded, torch.Tensor) else loaded.narrow(0, 0, loaded.shape[0])


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
        self.local_sizes = self._local_sizes(shard_sizes)
        self.offsets = [sum(self.local_sizes[:i]) for i in range(len(self.local_sizes))]
        out_local = sum(self.local_sizes)
        self.weight = _attach(nn.Parameter(torch.empty(out_local, in_features, dtype=dtype, device=device), requires_grad=False),
                              self._loader("weight"))
        self.bias = (_attach(nn.Parameter(torch.empty(out_local, dtype=dtype, device=device), requires_grad=False),
                             self._loader("bias")) if bias else None)

    def _local_sizes(self, shard_sizes: list[int]) -> list[int]:
        return [_check_divisible(s, self.tp_size, "output features") for s in shard_sizes]

    def shard_index(self, shard_id: str | int | None) -> int:
        return 0 if shard_id is None else int(shard_id)

    def _loader(self, which: str) -> WeightLoader:
        def load(loaded: Any, shard_id: str | int | None) -> None:
            i = self.shard_index(shard_id)
            size = self.local_sizes[i]
            if loaded.shape[0] != size * self.tp_size:
                raise ValueError(f"{which} shard {shard_id!r}: checkpoint has {loaded.shape[0]} rows, expected {size * self.tp_size}")
            part = loaded.narrow(0, self.tp_rank * size, size)
            getattr(self, which).data.narrow(0, self.offsets[i], size).copy_(part)

        return load

    def forward(self, x: torch.Tensor, linear: Linear = F.linear) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class HeadSplit:
    """The attention heads of one rank: whole KV groups, as evenly as they go (smollm2's 3
    KV heads over 2 ranks: 2 and 1), or, with fewer KV heads than ranks, an equal share of
    the query heads and a copy of the one KV head they read."""

    q_start: int
    q_count: int
    kv_start: int
    kv_count: int

    @classmethod
    def of(cls, num_heads: int, num_kv_heads: int, tp_rank: int = 0, tp_size: int = 1) -> HeadSplit:
        group = num_heads // num_kv_heads
        if num_kv_heads >= tp_size:
            counts = [num_kv_heads // tp_size + (i < num_kv_heads % tp_size) for i in range(tp_size)]
            kv_start = sum(counts[:tp_rank])
            return cls(kv_start * group, counts[tp_rank] * group, kv_start, counts[tp_rank])
        if tp_size % num_kv_heads or num_heads % tp_size:
            raise ValueError(f"{num_heads} query and {num_kv_heads} KV heads do not split over tp_size={tp_size}: "
                             "with fewer KV heads than ranks, both head counts must divide into tp_size shares")
        q_count = num_heads // tp_size
        return cls(tp_rank * q_count, q_count, tp_rank // (tp_size // num_kv_heads), 1)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections fused into one matmul; shard ids 'q', 'k', 'v'; each rank
    keeps the heads of its HeadSplit."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool, *,
                 tp_rank: int = 0, tp_size: int = 1, **kw) -> None:
        self.heads = HeadSplit.of(num_heads, num_kv_heads, tp_rank, tp_size)
        self.head_dim = head_dim
        h = self.heads
        super().__init__(hidden_size, [h.q_count * head_dim, h.kv_count * head_dim, h.kv_count * head_dim], bias,
                         tp_rank=tp_rank, tp_size=tp_size, **kw)
        self.full_rows = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]

    def _local_sizes(self, shard_sizes: list[int]) -> list[int]:
        return shard_sizes  # this rank's heads already

    def shard_index(self, shard_id: str | int | None) -> int:
        return {"q": 0, "k": 1, "v": 2}[str(shard_id)]

    def _loader(self, which: str) -> WeightLoader:
        def load(loaded: Any, shard_id: str | int | None) -> None:
            i = self.shard_index(shard_id)
            if loaded.shape[0] != self.full_rows[i]:
                raise ValueError(f"{which} shard {shard_id!r}: checkpoint has {loaded.shape[0]} rows, "
                                 f"expected {self.full_rows[i]}")
            start = (self.heads.q_start if i == 0 else self.heads.kv_start) * self.head_dim
            size = self.local_sizes[i]
            getattr(self, which).data.narrow(0, self.offsets[i], size).copy_(loaded.narrow(0, start, size))

        return load


class RowParallelLinear(nn.Module):
    """y = x W^T (+ b) with W's columns (inputs) split across ranks; outputs need an all-reduce
    over ranks when tp_size > 1, and only rank 0 adds the bias."""

    def __init__(self, in_features: int, out_features: int, bias: bool, *, tp_rank: int = 0, tp_size: int = 1,
                 tp: TPGroup | None = None, in_slice: tuple[int, int] | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        self.tp_rank, self.tp_size, self.tp = tp_rank, tp_size, tp
        self.in_features = in_features
        if in_slice is None:  # an equal share (`in_slice`: (start, count) of the inputs, e.g. a rank's heads)
            count = _check_divisible(in_features, tp_size, "input features")
            in_slice = (tp_rank * count, count)
        self.in_start, self.in_local = in_slice
        self.weight = _attach(nn.Parameter(torch.empty(out_features, self.in_local, dtype=dtype, device=device), requires_grad=False),
                              self._load_weight)
        self.bias = (_attach(nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False),
                             self._load_bias) if bias else None)

    def _load_weight(self, loaded: Any, shard_id: str | int | None) -> None:
        if loaded.shape[1] != self.in_features:
            raise ValueError(f"weight: checkpoint has {loaded.shape[1]} columns, expected {self.in_features}")
        self.weight.data.copy_(loaded.narrow(1, self.in_start, self.in_local))

    def _load_bias(self, loaded: Any, shard_id: str | int | None) -> None:
        if self.tp_rank == 0:
            self.bias.data.copy_(_whole(loaded))
        else:
            self.bias.data.zero_()

    def forward(self, x: torch.Tensor, linear: Linear = F.linear) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)
        return self.tp.all_reduce(y) if self.tp is not None and self.tp_size > 1 else y


class VocabEmbedding(nn.Module):
    """Token embeddings, or an LM head's rows, split across ranks by vocabulary rows (the
    last rank's shard padded when the vocabulary does not divide)."""

    def __init__(self, vocab_size: int, hidden_size: int, *, tp: TPGroup | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        self.vocab_size, self.tp = vocab_size, tp
        size = tp.size if tp is not None else 1
        self.rows = -(-vocab_size // size)
        self.start = (tp.rank if tp is not None else 0) * self.rows
        self.weight = _attach(nn.Parameter(torch.zeros(self.rows, hidden_size, dtype=dtype, device=device),
                                           requires_grad=False), self._load)

    def _load(self, loaded: Any, shard_id: str | int | None) -> None:
        if tuple(loaded.shape) != (self.vocab_size, self.weight.shape[1]):
            raise ValueError(f"embedding: checkpoint shape {tuple(loaded.shape)}, expected "
                             f"{(self.vocab_size, self.weight.shape[1])}")
        n = max(0, min(self.rows, self.vocab_size - self.start))
        self.weight.data[:n].copy_(loaded.narrow(0, self.start, n))

    @property
    def sharded(self) -> bool:
        return self.tp is not None and self.tp.size > 1

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.sharded:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.rows)
        x = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside[:, None], 0.0)
        return self.tp.all_reduce(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h @ weight^T over the whole vocabulary (this rank's columns, gathered)."""
        local = F.linear(h, self.weight)
        if not self.sharded:
            return local
        return self.tp.all_gather_last(local)[:, : self.vocab_size]


class RMSNormWeight(nn.Module):
    """Holds an RMSNorm weight; the kernel that applies it is chosen by the runner."""

    def __init__(self, size: int, eps: float, *, dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _attach(nn.Parameter(torch.empty(size, dtype=dtype, device=device), requires_grad=False), self._load)

    def _load(self, loaded: Any, shard_id: str | int | None) -> None:
        self.weight.data.copy_(_whole(loaded))
