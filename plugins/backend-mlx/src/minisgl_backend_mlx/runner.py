"""The backend-mlx model runner: an mlx-lm model whose attention reads and writes minisgl's
paged KV pool (kept as mlx arrays).

Each step the scheduler hands over one ragged ForwardBatch. The runner plans it as one or
more padded [rows, new tokens] model calls (step_plan.py: long prefills are cut into
MLX_PREFILL_STEP_SIZE pieces, decodes never pad up to a prefill's length), gives every
attention layer a cache object that writes into the pool and gathers each row's
page-table row (paged_cache.py), projects only the sampled rows through the LM head, and
hands their logits to minisgl's torch sampler (through numpy: on a CPU or unified memory
the copy is cheap next to the model).
"""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import torch
from mlx.utils import tree_flatten

from minisgl.cache.kv_budget import KVShape, size_kv_pool
from minisgl.engine.batch import ForwardBatch, ForwardResult, ModelRunner
from minisgl.engine.sampler import sample

from .kv_pool import KVPool, available_memory_bytes
from .paged_cache import PagedLayerCache, PagedStep
from .step_plan import SubStep, plan_step
from .weights import load_mlx_model

logger = logging.getLogger(__name__)

# architectures whose Model.__call__ is exactly `head(self.model(inputs, cache))`: for
# these the LM head runs on the sampled rows only (others project every row, then select)
SPLIT_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"})


def pick_mlx_device(requested: str) -> mx.Device:
    """`auto` takes mlx's GPU where there is one (Metal on Apple silicon), else the CPU."""
    if requested == "cpu":
        return mx.Device(mx.cpu)
    if requested in ("auto", "mps", "cuda"):
        if mx.is_available(mx.gpu):
            return mx.Device(mx.gpu)
        if requested == "auto":
            return mx.Device(mx.cpu)
    raise ValueError(f"--device {requested}: mlx has no GPU here (backend mlx runs on Apple silicon or the CPU)")


def _eos_token_ids(config: dict[str, Any]) -> list[int]:
    """mlx-lm's load_config already prefers generation_config.json's eos_token_id."""
    eos = config.get("eos_token_id")
    if eos is None:
        eos = (config.get("text_config") or {}).get("eos_token_id")
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _context_length(config: dict[str, Any], override: int | None) -> int:
    if override is not None:
        return override
    for source in (config, config.get("text_config") or {}):
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = source.get(name)
            if isinstance(value, int) and value > 0:
                return value
    raise ValueError("the model config names no context length; set --max-seq-len-override")


def _kv_shape(model: nn.Module, config: dict[str, Any]) -> KVShape:
    text = config.get("text_config") or config
    heads = text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    # the activations' dtype: that of the first floating parameter (quantized weights are ints)
    dtype = next(
        (v.dtype for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)), mx.float32
    )
    return KVShape(len(model.layers), kv_heads, head_dim, dtype, dtype.size)


class MLXModelRunner(ModelRunner):
    """ModelRunner for mlx-lm models."""

    def __init__(self, settings: Any, model: Any) -> None:
        self.mlx_device = pick_mlx_device(settings.device)
        mx.set_default_device(self.mlx_device)
        # the engine's tensors (ids, page table, sampling) stay torch tensors on the host
        self.device = torch.device("cpu")
        self.forward_on_host = self.mlx_device.type == mx.cpu  # on Metal, grammar masks fill beside the forward
        trust = settings.mlx_trust_remote_code or settings.trust_remote_code
        self.model, self.config = load_mlx_model(
            model.path,
            dummy=model.dummy,
            dtype=settings.dtype,
            cache_dir=settings.mlx_cache_dir,
            trust_remote_code=trust,
        )
        self.name: str = model.name
        text = self.config.get("text_config") or self.config
        self.vocab_size: int = int(text["vocab_size"])
        self.max_context_len = _context_length(self.config, settings.max_seq_len_override)
        self.eos_token_ids = _eos_token_ids(self.config)
        # MLX_PREFILL_STEP_SIZE: the most new tokens (padding included) one model call takes;
        # also offered to the scheduler, which may use it as this backend's prefill budget
        self.max_prefill_tokens: int = settings.mlx_prefill_step_size
        # AGGRESSIVE_MAX_NEW_TOKENS: ask the engine to cap each request at its fair share of
        # the pool, so a full batch never retracts (on unified memory that hurts most)
        self.kv_fair_share: bool = settings.aggressive_max_new_tokens
        self._body, self._head = self._split_head(self.config.get("model_type", ""))

        shape = _kv_shape(self.model, self.config)
        free, total = available_memory_bytes()
        size = size_kv_pool(
            shape, settings.page_size, device=f"mlx {self.mlx_device.type.name}", free_bytes=free, total_bytes=total,
            host_memory=True, memory_ratio=settings.memory_ratio, num_pages=settings.num_pages,
            max_running_requests=settings.max_running_requests, context_len=self.max_context_len,
            slot_cap=("MLX_MAX_KV_SIZE", settings.mlx_max_kv_size),
        )
        logger.info("KV pool: %s", size.reason)
        self.pool = KVPool(shape, size.slots)
        logger.info(
            "Model %s (mlx-lm %s) on mlx %s, dtype %s, context %d tokens, EOS token id(s) %s, "
            "prefill step %d tokens, LM head on %s",
            self.name,
            self.config.get("model_type"),
            self.mlx_device.type.name,
            str(shape.dtype).removeprefix("mlx.core."),
            self.max_context_len,
            self.eos_token_ids,
            self.max_prefill_tokens,
            "sampled rows only" if self._head is not None else "every row",
        )
        self._no_rows = torch.empty(0, dtype=torch.long)

    def _split_head(self, model_type: str) -> tuple[Any, Any]:
        """(transformer body, LM head) where the architecture is known to be exactly that."""
        body = getattr(self.model, "model", None)
        if model_type not in SPLIT_HEAD_MODEL_TYPES or body is None:
            return None, None
        head = getattr(self.model, "lm_head", None)
        if head is None and getattr(self.model.args, "tie_word_embeddings", False):
            head = body.embed_tokens.as_linear
        return (body, head) if head is not None else (None, None)

    def kv_capacity(self) -> int:
        return self.pool.capacity

    def _run(self, sub: SubStep) -> mx.array | None:
        """One padded model call: K/V land in the pool; logits [k, V] of its sampled rows."""
        step = PagedStep(sub)
        caches = [PagedLayerCache(self.pool, layer, step) for layer in range(self.pool.shape.num_layers)]
        tokens = mx.array(sub.tokens)
        rows = mx.array(sub.sampled_positions)
        if self._head is not None:
            hidden = self._body(tokens, cache=caches)
            if len(sub.sampled_positions) == 0:
                return None
            hidden = hidden.reshape(-1, hidden.shape[-1])[rows]
            return self._head(hidden).astype(mx.float32)
        logits = self.model(tokens, cache=caches)
        if len(sub.sampled_positions) == 0:
            return None
        return logits.reshape(-1, logits.shape[-1])[rows].astype(mx.float32)

    def compute_logits(self, batch: ForwardBatch) -> torch.Tensor | None:
        """Run the model on the batch (writing its K/V into the pool); float32 logits [S, V]
        of the sampled rows, or None when nothing is sampled (a mid-prompt chunk)."""
        sampled = batch.sampling is not None and batch.sample_indices.numel() > 0
        out = np.empty((batch.sample_indices.numel(), self.vocab_size), dtype=np.float32) if sampled else None
        for sub in plan_step(batch, self.max_prefill_tokens, self.pool.scratch_slot):
            logits = self._run(sub)
            # evaluate call by call: the pool is updated in place and each graph stays small
            mx.eval(self.pool.k, self.pool.v, *([logits] if logits is not None else []))
            if logits is not None and out is not None:
                out[sub.sampled_order] = np.asarray(logits)[:, : self.vocab_size]
        return torch.from_numpy(out) if out is not None else None

    def forward(self, batch: ForwardBatch) -> ForwardResult:
        logits = self.compute_logits(batch)
        if logits is None or batch.sampling is None:
            return ForwardResult(next_tokens=self._no_rows)
        return sample(logits, batch.sampling)

    def shutdown(self) -> None:
        """Drop the weights and the pool so their memory is freed."""
        for name in ("model", "pool", "_body", "_head"):
            if hasattr(self, name):
                delattr(self, name)
        mx.clear_cache()


def create_runner(settings: Any, model: Any) -> MLXModelRunner:
    """BackendSpec factory: `create_runner(settings, resolved_model)`."""
    return MLXModelRunner(settings, model)
