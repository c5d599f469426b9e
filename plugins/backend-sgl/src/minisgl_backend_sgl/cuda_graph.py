"""CUDA graphs for decode steps: one graph per batch size, replayed with the step's inputs.
A batch of short extends (a speculative verify step: each request's last token and its
drafts) replays the same graphs, one decode row per token (`as_decode_rows`).

A decode step launches a few hundred small kernels; replaying a captured graph removes the
CPU launch cost of each. Inputs live in static buffers that the step's tensors are copied
into; a batch of B requests replays the smallest captured size >= B, its extra rows padded
with a harmless dummy request (position 0, one key, K/V written to the pool's scratch slot).
Sampling stays outside the graph: its parameters change the shape of the work.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left

import torch

from minisgl.engine.batch import ForwardBatch

from .forward_meta import ForwardMeta, decode_splits
from .kernels.select import KernelSet
from .kv_cache import KVCache
from .model import CausalLM

logger = logging.getLogger(__name__)

GIB = 1024**3
AUTO_MAX_BS = 160  # mini-sglang captures 1..160 by default
AUTO_MAX_BS_LARGE_GPU = 256  # 80 GiB and up: a full W1 batch (256 running) replays instead of launching eagerly
AUTO_MAX_BS_SMALL_GPU = 64  # under 24 GiB of device memory
MAX_ROWS_PER_REQUEST = 16  # extends up to this long run as decode rows (drafts of a verify step)


def as_decode_rows(batch: ForwardBatch) -> ForwardBatch:
    """The same step with one decode row per new token. Row j of a request attends its
    prefix and its new tokens 0..j over the request's page-table row: causal attention, as
    the extend path computes it. Every layer stores the step's K/V before its attention
    reads them, so later rows see earlier rows' keys. Tokens keep their order, so
    sample_indices and the logits' rows mean what they meant."""
    rows = torch.tensor(batch.extend_lens)
    prefix_lens = [p + j for p, e in zip(batch.prefix_lens, batch.extend_lens) for j in range(e)]
    return ForwardBatch(
        input_ids=batch.input_ids, positions=batch.positions, out_slots=batch.out_slots,
        # output_size: no device-to-host read of the row counts on CUDA
        page_table=batch.page_table.repeat_interleave(rows.to(batch.page_table.device), dim=0,
                                                      output_size=batch.num_tokens),
        extend_lens=[1] * len(prefix_lens), prefix_lens=prefix_lens, sample_indices=batch.sample_indices,
        sampling=batch.sampling,
    )


def graph_batch_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to max_bs (max_bs itself included)."""
    if max_bs < 1:
        return []
    sizes = [s for s in (1, 2, 4, 8) if s <= max_bs] + list(range(16, max_bs + 1, 8))
    if sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


def resolve_max_bs(setting: int | None, max_running_requests: int, total_memory_bytes: int) -> int:
    """--cuda-graph-max-bs: 0 disables; None picks by device memory; never above the running cap."""
    if setting is None:
        setting = (AUTO_MAX_BS_LARGE_GPU if total_memory_bytes >= 80 * GIB else
                   AUTO_MAX_BS if total_memory_bytes >= 24 * GIB else AUTO_MAX_BS_SMALL_GPU)
    return min(setting, max_running_requests)


class DecodeGraphs:
    def __init__(self, model: CausalLM, kv: KVCache, cos_sin: torch.Tensor, kernels: KernelSet,
                 batch_sizes: list[int], max_context_len: int, num_sms: int, device: torch.device) -> None:
        self.batch_sizes = sorted(batch_sizes)
        self.max_bs = self.batch_sizes[-1]
        self.scratch_slot = kv.scratch_slot
        max_bs = self.max_bs
        self.input_ids = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.out_slots = torch.full((max_bs,), kv.scratch_slot, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(max_bs, dtype=torch.int32, device=device)
        self.page_table = torch.full((max_bs, max_context_len), kv.scratch_slot, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

        start = time.perf_counter()
        free_before = torch.cuda.mem_get_info(device)[0]
        logger.info("Capturing CUDA graphs for decode batch sizes %s", self.batch_sizes)
        pool = torch.cuda.graph_pool_handle()
        for bs in reversed(self.batch_sizes):  # largest first: smaller graphs reuse its memory
            meta = ForwardMeta(
                is_decode=True, positions=self.positions[:bs], out_slots=self.out_slots[:bs],
                page_table=self.page_table[:bs], seq_lens=self.seq_lens[:bs],
                decode_splits=decode_splits(bs, kv.shape.num_kv_heads, num_sms),
            )
            def step(bs: int = bs, meta: ForwardMeta = meta) -> torch.Tensor:
                return model(self.input_ids[:bs], meta, kv, cos_sin, kernels)

            step()  # compiles the kernels for this shape outside the capture
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[bs] = step()
            self.graphs[bs] = graph
        torch.cuda.synchronize(device)
        used = free_before - torch.cuda.mem_get_info(device)[0]
        logger.info("Captured %d CUDA graphs in %.1f s, using %.2f GiB", len(self.graphs), time.perf_counter() - start, used / GIB)

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.is_decode and 0 < batch.batch_size <= self.max_bs

    def can_run_as_decode_rows(self, batch: ForwardBatch) -> bool:
        return (not batch.images and 0 < batch.num_tokens <= self.max_bs
                and max(batch.extend_lens, default=0) <= MAX_ROWS_PER_REQUEST)

    def padded_size(self, batch_size: int) -> int:
        return self.batch_sizes[bisect_left(self.batch_sizes, batch_size)]

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [B, V] of the batch's rows (a view into the graph's output)."""
        b = batch.batch_size
        bs = self.padded_size(b)
        self.input_ids[:b].copy_(batch.input_ids, non_blocking=True)
        self.positions[:b].copy_(batch.positions, non_blocking=True)
        self.out_slots[:b].copy_(batch.out_slots, non_blocking=True)
        width = batch.page_table.shape[1]
        self.page_table[:b, :width].copy_(batch.page_table, non_blocking=True)
        self.seq_lens[:b].copy_(torch.tensor(batch.seq_lens, dtype=torch.int32).pin_memory(), non_blocking=True)
        if bs > b:  # padded rows: a one-token request at position 0 over the scratch slot
            self.input_ids[b:bs].zero_()
            self.positions[b:bs].zero_()
            self.out_slots[b:bs].fill_(self.scratch_slot)
            self.seq_lens[b:bs].fill_(1)
            self.page_table[b:bs, 0].fill_(self.scratch_slot)
        self.graphs[bs].replay()
        return self.logits[bs][:b]
