"""Runs backend-sgl's model on any device with a chosen KernelSet, outside the runner
(the runner itself needs CUDA): for comparisons against transformers."""

from __future__ import annotations

import torch

from minisgl.cache.kv_budget import KVShape
from minisgl.engine.batch import ForwardBatch
from minisgl_backend_sgl.config import load_model_config
from minisgl_backend_sgl.forward_meta import build_meta
from minisgl_backend_sgl.kernels.select import REFERENCE, KernelSet
from minisgl_backend_sgl.kv_cache import KVCache
from minisgl_backend_sgl.model import CausalLM
from minisgl_backend_sgl.rope import cos_sin_table
from minisgl_backend_sgl.weights import iter_checkpoint, load_weights


class ModelHarness:
    def __init__(self, model_dir: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 kernels: KernelSet = REFERENCE, capacity: int = 512) -> None:
        self.device = torch.device(device)
        self.config = cfg = load_model_config(model_dir)
        self.model = CausalLM(cfg, dtype=dtype, device=self.device)
        load_weights(self.model, iter_checkpoint(model_dir), cfg.tie_word_embeddings)
        self.kv = KVCache(KVShape(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, dtype, dtype.itemsize), capacity, 1, self.device)
        self.kv.k.normal_()  # garbage in unwritten slots must never leak into results
        self.kv.v.normal_()
        self.cos_sin = cos_sin_table(cfg.head_dim, cfg.rope, cfg.max_position_embeddings, self.device)
        self.kernels = kernels

    @torch.inference_mode()
    def logits(self, batch: ForwardBatch, decode_splits: int = 2) -> torch.Tensor:
        meta = build_meta(batch, self.device, decode_splits)
        return self.model(batch.input_ids.to(self.device), meta, self.kv, self.cos_sin, self.kernels,
                          batch.sample_indices.to(self.device))
