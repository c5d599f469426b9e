"""The backend seam: what the scheduler hands a model runner each step, and what it gets back.

The seam is batch-shaped. One ForwardBatch mixes decode requests (one new token each) with
prefill chunks (many new tokens each). Tokens of all requests are flattened into one
ragged dimension T, request by request, in the order of `extend_lens`.

KV memory is a pool of token slots owned by the backend as tensors and by the core as
indices. Slot ids are in [0, kv_capacity). A request's slots, position by position, form
its row of `page_table`; with --page-size P, slots come in aligned runs of P (slot // P is
the page), so a paged kernel may read every P-th entry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .messages import ImageInput


def to_device(values: list | tuple, device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A host list on the device; through pinned memory on CUDA, so the copy is queued on
    the stream instead of waiting for the step in flight."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)


@dataclass
class SamplingBatch:
    """Per-row sampling parameters for the S rows that are sampled this step (device tensors)."""

    temperature: torch.Tensor  # float32 [S]; 0 means greedy for that row
    top_p: torch.Tensor  # float32 [S]; 1.0 = off
    top_k: torch.Tensor  # int64 [S]; 0 = off
    min_p: torch.Tensor  # float32 [S]; 0.0 = off
    repetition_penalty: torch.Tensor  # float32 [S]; 1.0 = off
    frequency_penalty: torch.Tensor  # float32 [S]; 0.0 = off
    presence_penalty: torch.Tensor  # float32 [S]; 0.0 = off
    # per-row seed for reproducible sampling (seed, step) -> same draw; -1 = unseeded
    seeds: torch.Tensor  # int64 [S]
    steps: torch.Tensor  # int64 [S]: tokens generated so far by the row (part of the seed stream)
    # penalties look at tokens seen so far: padded [S, L] ids (pad = -1), only when needed
    history: torch.Tensor | None = None
    min_new_tokens_mask: torch.Tensor | None = None  # bool [S]: rows that must not stop yet
    stop_token_ids: torch.Tensor | None = None  # int64 [S, K] padded with -1, masked while min_new_tokens
    # logit_bias: token ids int64 [S, K] padded with -1, and their biases float32 [S, K]
    logit_bias_ids: torch.Tensor | None = None
    logit_bias: torch.Tensor | None = None
    top_logprobs: int = 0  # max top-k logprobs requested by any row (0 = none)
    want_logprobs: bool = False
    all_greedy: bool = True  # fast path: plain argmax
    needs_penalties: bool = False
    # structured outputs: int32 [S, ceil(V / 32)], bit t of row s set = token t allowed (None: no grammar)
    # (a Future: the engine fills it on a worker thread while the forward runs; the sampler waits)
    vocab_mask: Future[torch.Tensor] | None = None
    # what the host knows of the rows, so the sampler never stops to ask the device (a sync
    # would end overlap scheduling); None: read from the tensors above
    top_k_max: int | None = None  # the largest top_k in use (0: none)
    any_top_p: bool | None = None
    any_min_p: bool | None = None
    any_seeded: bool | None = None


@dataclass
class ImageSlice:
    """Tokens [token_index, token_index + length) of the batch take rows [row, row + length)
    of `image`'s embeddings (a chunk may hold part of an image, or a cache hit the rest)."""

    token_index: int
    image: ImageInput
    row: int
    length: int


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    out_slots: torch.Tensor  # int64 [T]: pool slot where each new token's K/V is written
    page_table: torch.Tensor  # int64 [B, max(seq_lens)]: slots of positions 0..seq_len-1 per request (pad 0)
    extend_lens: list[int]  # [B] new tokens per request this step
    prefix_lens: list[int]  # [B] tokens already in the pool per request (cached prefix + earlier chunks)
    sample_indices: torch.Tensor  # int64 [S]: indices into T whose logits are sampled
    sampling: SamplingBatch | None  # None when S == 0 (only intermediate prefill chunks)
    # host copies of the same numbers, so runners need not synchronise to read them
    seq_lens: list[int] = field(default_factory=list)  # [B] prefix_lens + extend_lens
    # image positions among the new tokens: their input_ids are pad ids, not token ids
    images: list[ImageSlice] = field(default_factory=list)
    # [start, end) ranges of T whose final hidden states (after the model's last norm, before
    # the LM head) are summed, one row of ForwardResult.pooled each (pooling requests)
    pool_spans: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.seq_lens:
            self.seq_lens = [p + e for p, e in zip(self.prefix_lens, self.extend_lens)]

    @property
    def batch_size(self) -> int:
        return len(self.extend_lens)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def is_decode(self) -> bool:
        """Every request adds exactly one token (CUDA-graph eligible)."""
        return all(e == 1 for e in self.extend_lens)


@dataclass
class ForwardResult:
    """Sampled next tokens for the S sampled rows. On an asynchronous device the tensors
    may still be in flight: the scheduler calls `resolve()` only when it needs the values,
    which lets it prepare step N+1 while step N runs (overlap scheduling)."""

    next_tokens: torch.Tensor  # int64 [S]
    logprobs: torch.Tensor | None = None  # float32 [S]: logprob of the sampled token
    top_logprob_ids: torch.Tensor | None = None  # int64 [S, K]
    top_logprob_values: torch.Tensor | None = None  # float32 [S, K]
    ready: torch.cuda.Event | None = None  # recorded after the copies to host were queued
    # next_tokens as the sampler left them on the runner's device, when next_tokens is a host
    # copy still in flight: overlap scheduling feeds these to step N+1 without waiting
    device_next_tokens: torch.Tensor | None = None
    # the step's sampling, not launched yet: the forward is queued but the grammar mask was
    # still being filled, so the engine calls this (the whole result) once it has processed
    # the step before, instead of waiting for the mask
    sample_later: Callable[[], ForwardResult] | None = None
    pooled: torch.Tensor | None = None  # float32 [len(batch.pool_spans), embedding_size]

    @property
    def future_tokens(self) -> torch.Tensor:
        """The sampled tokens, possibly not computed yet, for the device's stream to read."""
        assert self.sample_later is None, "the step's sampling was never launched"
        return self.device_next_tokens if self.device_next_tokens is not None else self.next_tokens

    def resolve(self) -> ForwardResult:
        assert self.sample_later is None, "the step's sampling was never launched"
        if self.ready is not None:
            self.ready.synchronize()
        return self


class ModelRunner(ABC):
    """What a backend builds (subclass it). Created by the BackendSpec factory:
    `create_runner(settings: Settings, model: ResolvedModel) -> ModelRunner`. The engine
    reads every member below directly; the capabilities' defaults describe a plain runner
    whose forward is synchronous and takes text only."""

    eos_token_ids: list[int]
    vocab_size: int
    max_context_len: int
    device: torch.device

    # `forward` returns before the device is done (ForwardResult.ready set, and
    # device_next_tokens where next_tokens is a host copy): the engine launches step N+1
    # before it reads step N's tokens. Such a runner may also return before the step's
    # grammar mask is filled, with the sampling in `sample_later`.
    supports_overlap: bool = False
    # takes ForwardBatch.images; the engine refuses requests with images on any other runner
    supports_images: bool = False
    # whether the forward runs on the host's cores (None: when `device` is the CPU); the
    # engine fills grammar masks before such a forward instead of beside it
    forward_on_host: bool | None = None
    # the most new tokens one forward takes; the scheduler splits prefills to fit (None: no limit)
    max_prefill_tokens: int | None = None
    # a request may grow only to its share of the pool (max_new_tokens capped on admission),
    # so a full batch never has to retract
    kv_fair_share: bool = False
    # copies of KV pages between the pool and the host, for the hierarchical cache's tiers
    # (None: not supported). read_kv(slots) returns every layer's K and V at `slots` as one
    # contiguous tensor with the token dimension first ([len(slots), ...]), on the pool's
    # device (the tiers copy it to the host off the step's critical path) or on the host;
    # write_kv(slots, data) stores such a tensor, on either, back at other slots.
    read_kv: Callable[[list[int]], torch.Tensor] | None = None
    write_kv: Callable[[list[int], torch.Tensor], None] | None = None
    # the width of the final hidden states a forward sums over ForwardBatch.pool_spans into
    # ForwardResult.pooled (embeddings); 0: this runner does not compute them
    embedding_size: int = 0

    @abstractmethod
    def kv_capacity(self) -> int:
        """Token slots in the pool (a multiple of the page size)."""

    @abstractmethod
    def forward(self, batch: ForwardBatch) -> ForwardResult:
        """Write the new tokens' K/V into `out_slots`, attend over `page_table`, and sample
        the rows in `sample_indices` with `sampling`."""

    def shutdown(self) -> None:  # noqa: B027 - optional: a runner without workers has nothing to free
        """Free the device memory and any worker the runner started."""
