"""A model runner that keeps no K/V at all: it stores each token id in the slot the
scheduler gave it, reads every sequence back through the page table, and runs the whole
sequence through a transformers model. Wrong slot bookkeeping in the scheduler (a slot
shared by two requests, a stale page-table row, a cached prefix with the wrong slots)
gives wrong tokens here, so it tests the scheduler independently of any backend."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from minisgl.engine.batch import ForwardBatch, ForwardResult, ModelRunner
from minisgl.engine.sampler import sample


class OracleRunner(ModelRunner):
    def __init__(self, model_path: str, kv_slots: int, max_context_len: int = 512) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.vocab_size = self.model.config.vocab_size
        eos = self.model.generation_config.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.max_context_len = max_context_len
        self.device = torch.device("cpu")
        self.slot_tokens = torch.full((kv_slots,), -1, dtype=torch.int64)
        self.forwards = 0

    def kv_capacity(self) -> int:
        return int(self.slot_tokens.shape[0])

    @torch.no_grad()
    def forward(self, batch: ForwardBatch) -> ForwardResult:
        self.forwards += 1
        self.slot_tokens[batch.out_slots] = batch.input_ids
        ends = torch.tensor(batch.extend_lens).cumsum(0) - 1
        rows = []
        for i in batch.sample_indices.tolist():
            b = int((ends == i).nonzero()[0, 0])
            seq = self.slot_tokens[batch.page_table[b, : batch.seq_lens[b]]]
            assert bool((seq >= 0).all()), "page table points at a slot that was never written"
            rows.append(self.model(seq[None]).logits[0, -1])
        if not rows:
            return ForwardResult(next_tokens=torch.empty(0, dtype=torch.int64))
        assert batch.sampling is not None
        return sample(torch.stack(rows), batch.sampling)

    def shutdown(self) -> None:
        pass
