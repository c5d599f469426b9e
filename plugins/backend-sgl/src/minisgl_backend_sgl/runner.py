"""backend-sgl's ModelRunner: our decoder on CUDA with Triton kernels, a paged KV pool sized
from --memory-ratio, and CUDA graphs for decode batches. With `--device cpu` the same model,
weights and pool run on the torch reference kernels, synchronously (for tests and checks).

A step: copy the batch's indices to the device, run the model (replaying a CUDA graph for
decode batches that fit one), sample on the device, queue the copies of the sampled tokens
to pinned host memory and record an event. `forward` returns without waiting, so the
scheduler can prepare the next step while this one runs (overlap scheduling): the result
also carries the sampled tokens still on the device, which the next step's decode rows
read as their input in stream order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import torch

from minisgl.cache.kv_budget import GIB, KVShape, size_kv_pool
from minisgl.cpu_threads import usable_cpus
from minisgl.dtypes import resolve_dtype
from minisgl.engine.batch import ForwardBatch, ForwardResult, ModelRunner, SamplingBatch, to_device
from minisgl.engine.sampler import sample
from minisgl.engine.scheduler import prefill_chunk

from .config import ModelConfig, load_model_config
from .cuda_graph import DecodeGraphs, as_decode_rows, graph_batch_sizes, resolve_max_bs
from .forward_meta import build_meta, decode_splits, validate_batch
from .kernels.select import select_kernels
from .kv_cache import KVCache
from .linear import HeadSplit
from .model import CausalLM
from .rope import cos_sin_table
from .tp import KVCommand, TensorParallel, Workers, batch_metadata, bind_store, init_port
from .weights import init_dummy_weights, iter_checkpoint, load_weights

logger = logging.getLogger(__name__)

SLACK_BYTES = 1 * GIB  # allocator fragmentation, cuBLAS workspaces, Triton and NCCL buffers


def activation_reserve_bytes(config: ModelConfig, dtype: torch.dtype, max_prefill_tokens: int, max_running: int) -> int:
    """Device memory a step needs beyond weights and KV: the largest prefill chunk's
    activations (qkv, gate_up, attention out, residual) and the sampler's float32 work on
    up to max_running rows of logits (top-p sorts a copy)."""
    item = torch.empty((), dtype=dtype).element_size()
    per_token = config.q_size + 2 * config.kv_size + 3 * config.intermediate_size + 4 * config.hidden_size + config.q_size
    sampler = 6 * max_running * config.vocab_size * 4
    return max_prefill_tokens * per_token * item + sampler + SLACK_BYTES


def _to_device(sampling: SamplingBatch, device: torch.device) -> SamplingBatch:
    updates = {
        f.name: value.to(device, non_blocking=True)
        for f in dataclasses.fields(sampling)
        if isinstance(value := getattr(sampling, f.name), torch.Tensor) and value.device != device
    }
    return dataclasses.replace(sampling, **updates) if updates else sampling


def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


class SglModelRunner(ModelRunner):
    # forward() returns before the GPU is done; the engine then launches step N+1 before it
    # reads step N's tokens (set it False, on the class or an instance, before the Engine is built to turn it off)
    supports_overlap = True

    def __init__(self, settings: Any, model_path: str, dummy: bool, *, graph_batch_sizes_override: list[int] | None = None,
                 device: torch.device | None = None, tp_rank: int = 0) -> None:
        self.device = device or _device(settings.device, tp_rank)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.cuda.set_device(self.device)
        else:
            self.supports_overlap = False  # forward is synchronous: nothing to overlap
        self.config = config = load_model_config(model_path)
        self.dtype = dtype = resolve_dtype(settings.dtype, config, self.device.type)
        self.tp: TensorParallel | None = None
        self.workers: Workers | None = None
        self._threads = 0  # torch's threads before the ranks split the CPU
        if settings.tp_size > 1:
            self._join_group(settings, model_path, dummy, tp_rank)
        self.eos_token_ids = list(config.eos_token_ids)
        self.vocab_size = config.vocab_size
        logger.info(
            "backend-sgl: %s, %d layers, hidden %d, %d query / %d KV heads of %d, vocab %d, %.2f B params, %s on %s",
            config.architecture, config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
            config.head_dim, config.vocab_size, config.num_params() / 1e9, str(dtype).removeprefix("torch."), self.device,
        )

        start = time.perf_counter()
        self.model = CausalLM(config, tp=self.tp, dtype=dtype, device=self.device)
        if dummy or settings.dummy_weight:
            init_dummy_weights(self.model)
        else:
            load_weights(self.model, iter_checkpoint(model_path), config.tie_word_embeddings)
        self._sync()
        weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        logger.info("Model ready in %.1f s: %.2f GiB of weights", time.perf_counter() - start, weight_bytes / GIB)

        attn = self.model.model.layers[0].self_attn  # this rank's heads (its HeadSplit)
        self.kernels = select_kernels(self.device, dtype, settings.attention_backend, settings.moe_backend,
                                      heads=(attn.num_heads, attn.num_kv_heads, config.head_dim),
                                      prefill_tokens=prefill_chunk(settings.max_prefill_length, self.device))
        self.num_sms = torch.cuda.get_device_properties(self.device).multi_processor_count if self.cuda else 1

        max_context = config.max_position_embeddings
        if settings.max_seq_len_override:
            max_context = settings.max_seq_len_override
        free, total = _memory(self.device)
        if not self.cuda:  # the ranks of a CPU share its memory
            free, total = free // settings.tp_size, total // settings.tp_size
        shape = KVShape(config.num_layers, attn.num_kv_heads, config.head_dim, dtype, dtype.itemsize)
        size = size_kv_pool(
            shape, settings.page_size, device=str(self.device), free_bytes=free, total_bytes=total,
            host_memory=not self.cuda, memory_ratio=settings.memory_ratio, num_pages=settings.num_pages,
            max_running_requests=settings.max_running_requests, context_len=max_context,
            reserve_bytes=activation_reserve_bytes(config, dtype, prefill_chunk(settings.max_prefill_length, self.device),
                                                   settings.max_running_requests),
        )
        logger.info("KV pool: %s", size.reason)
        num_pages = size.num_pages
        if self.tp is not None:  # every rank's pool has rank 0's number of slots
            num_pages = int(self.tp.broadcast(torch.tensor([num_pages]) if tp_rank == 0 else None, 1).item())
        self.kv = KVCache(shape, num_pages, settings.page_size, self.device)
        if self.tp is None:
            self.read_kv, self.write_kv = self._read_kv, self._write_kv
        elif tp_rank == 0:  # each rank holds its heads of the pages: rank 0 gathers and scatters them (tp.py)
            self._kv_heads = [HeadSplit.of(config.num_heads, config.num_kv_heads, r, settings.tp_size).kv_count
                              for r in range(settings.tp_size)]
            self.read_kv, self.write_kv = self._tp_read_kv, self._tp_write_kv
        self.max_context_len = min(max_context, self.kv.capacity)
        self.cos_sin = cos_sin_table(config.head_dim, config.rope, self.max_context_len, self.device)

        sizes, graphs_off = [], None
        if not self.cuda:
            pass
        elif self.tp is not None:
            graphs_off = "--tp-size > 1: the all-reduce is not captured yet"
        elif self.kernels.attention[1] == "fa":
            graphs_off = "decode attention by fa sizes its work by the step's key count, on the host"
        elif graph_batch_sizes_override is not None:
            sizes = graph_batch_sizes_override
        else:
            sizes = graph_batch_sizes(resolve_max_bs(settings.cuda_graph_max_bs, settings.max_running_requests, total))
            graphs_off = "--cuda-graph-max-bs 0"
        self.graphs: DecodeGraphs | None = None
        if sizes:
            with torch.inference_mode():
                if self.kernels.choose_linears is not None:
                    self.kernels.choose_linears(self.model.projection_weights(), sizes)
                self.graphs = DecodeGraphs(self.model, self.kv, self.cos_sin, self.kernels, sizes,
                                           self.max_context_len, self.num_sms, self.device)
        elif graphs_off:
            logger.info("CUDA graphs off (%s): decode runs eagerly", graphs_off)
        logger.info("Free %s memory after initialisation: %.2f GiB", self.device.type, _memory(self.device)[0] / GIB)

    def kv_capacity(self) -> int:
        return self.kv.capacity

    def _read_kv(self, slots: list[int]) -> torch.Tensor:
        return self.kv.read(to_device(slots, self.device))

    def _write_kv(self, slots: list[int], data: torch.Tensor) -> None:
        self.kv.store(to_device(slots, self.device), data)

    def _tp_read_kv(self, slots: list[int]) -> torch.Tensor:
        with self.workers.watch():
            self.workers.send(KVCommand("read", slots))
            return self.tp.gather_heads(self._read_kv(slots), self._kv_heads)

    def _tp_write_kv(self, slots: list[int], data: torch.Tensor) -> None:
        with self.workers.watch():
            self.workers.send(KVCommand("write", slots))
            self._write_kv(slots, self.tp.scatter_heads(data, self._kv_heads))

    def shard_kv(self, command: KVCommand) -> None:
        """A worker's part of rank 0's read_kv / write_kv: its own heads of the pages."""
        if command.op == "read":
            self.tp.gather_heads(self._read_kv(command.slots), [])
        else:
            k = self.kv.k
            mine = torch.empty((len(command.slots), 2, k.shape[0], *k.shape[2:]), dtype=k.dtype, device=k.device)
            self._write_kv(command.slots, self.tp.scatter_heads(mine, []))

    def _join_group(self, settings: Any, model_path: str, dummy: bool, rank: int) -> None:
        """Rank 0 starts the other ranks; every rank joins the group (see tp.py)."""
        port = init_port(settings)
        store = None
        if rank == 0:
            store = bind_store(port, settings.tp_size)
            self.workers = Workers(settings, model_path, dummy, settings.tp_size, port)
            self.workers.wait_ready()
        if not self.cuda:  # the ranks share the CPU's cores (given back at shutdown)
            self._threads = torch.get_num_threads()
            torch.set_num_threads(max(1, len(usable_cpus()) // settings.tp_size))
        self.tp = TensorParallel(rank, settings.tp_size, port, self.device, store)

    @torch.inference_mode()
    def logits(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [S, V] of the batch's sampled rows (no sampling): for tests and scoring.
        With tensor parallelism every rank runs the batch with this one."""
        validate_batch(batch)
        if self.workers is not None:
            with self.workers.watch():
                self.workers.send(batch_metadata(batch))
                self.tp.broadcast(batch.input_ids, batch.num_tokens)
                return self.shard_logits(batch)
        return self.shard_logits(batch)

    @torch.inference_mode()
    def shard_logits(self, batch: ForwardBatch) -> torch.Tensor:
        """This rank's part of the step (all of it without tensor parallelism)."""
        sample_indices = batch.sample_indices.to(self.device, non_blocking=True)
        if self.graphs is not None and self.graphs.can_run(batch):
            return self.graphs.run(batch).index_select(0, sample_indices)
        if self.graphs is not None and self.graphs.can_run_as_decode_rows(batch):
            return self.graphs.run(as_decode_rows(batch)).index_select(0, sample_indices)
        splits = decode_splits(batch.batch_size, self.config.num_kv_heads, self.num_sms)
        meta = build_meta(batch, self.device, splits)
        input_ids = batch.input_ids.to(self.device, non_blocking=True)
        return self.model(input_ids, meta, self.kv, self.cos_sin, self.kernels, sample_indices)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> ForwardResult:
        if batch.num_tokens == 0:
            return ForwardResult(next_tokens=torch.empty(0, dtype=torch.int64))
        logits = self.logits(batch)
        if batch.sampling is None or logits.shape[0] == 0:
            return ForwardResult(next_tokens=torch.empty(0, dtype=torch.int64))
        sampling = _to_device(batch.sampling, self.device)
        mask = sampling.vocab_mask
        if self.supports_overlap and mask is not None and not mask.done():
            # the forward is queued; the engine launches the sampling once it has processed
            # the step before, while the mask's worker finishes, instead of waiting here
            return ForwardResult(next_tokens=torch.empty(0, dtype=torch.int64),
                                 sample_later=lambda: self._sample(logits, sampling))
        return self._sample(logits, sampling)

    @torch.inference_mode()
    def _sample(self, logits: torch.Tensor, sampling: SamplingBatch) -> ForwardResult:
        """Sample on the device and queue the tokens' copy to the host, without waiting."""
        result = sample(logits, sampling, bitmask=self.kernels.bitmask_logits, draw=self.kernels.gumbel_argmax)
        if not self.cuda:
            return result
        host = ForwardResult(
            next_tokens=_to_host(result.next_tokens),
            logprobs=_to_host(result.logprobs),
            top_logprob_ids=_to_host(result.top_logprob_ids),
            top_logprob_values=_to_host(result.top_logprob_values),
            ready=torch.cuda.Event(),
            # the sampler's own tensor, freshly allocated each step (logits are an index_select
            # out of the graph's static buffer, never the buffer itself), so no later replay
            # overwrites it; the result holds the reference until step N+1 has read it
            device_next_tokens=result.next_tokens,
        )
        host.ready.record()
        return host

    def shutdown(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        if self.tp is not None:
            self.tp.close()
            self.tp = None
            if self._threads:
                torch.set_num_threads(self._threads)
        self.graphs = None
        self.kv = None  # type: ignore[assignment]
        self.model = None  # type: ignore[assignment]
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def _device(requested: str, tp_rank: int = 0) -> torch.device:
    """--device: cuda (auto) for serving, a GPU per tensor-parallel rank (of the visible ones,
    from the current); cpu for the reference kernels."""
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("backend-sgl needs a CUDA GPU: torch.cuda.is_available() is False "
                           "(--device cpu runs it on the torch reference kernels, slowly)")
    index = torch.cuda.current_device() + tp_rank
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"tensor-parallel rank {tp_rank} needs GPU {index}, but {torch.cuda.device_count()} are visible")
    return torch.device("cuda", index)


def _memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of the device: the GPU's, or the host's available memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)
    page = os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * page
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError):  # not every platform says
        free = total // 2
    return free, total


def create_runner(settings: Any, model: Any) -> SglModelRunner:
    """BackendSpec factory: `model` is a ResolvedModel (path + whether weights are random)."""
    return SglModelRunner(settings, model.path, bool(getattr(model, "dummy", False)))
