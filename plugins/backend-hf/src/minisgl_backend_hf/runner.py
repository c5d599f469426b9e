"""The backend-hf model runner: a transformers causal LM whose attention reads and writes
minisgl's paged KV pool.

Each step the scheduler hands over one ForwardBatch; the runner calls the model once on all
of its tokens flattened into a single [1, T] sequence (with their true positions, so rotary
embeddings are right), lets the registered paged attention route each token to its request,
projects only the sampled rows through the LM head, and samples them on the device. Pooling
requests (embeddings) get the final hidden states of their spans summed instead.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationConfig,
    PreTrainedModel,
)

from minisgl.cache.kv_budget import KVShape, size_kv_pool
from minisgl.dtypes import resolve_dtype
from minisgl.engine.batch import ForwardBatch, ForwardResult, ModelRunner, to_device
from minisgl.engine.sampler import sample

from .attention import CONTEXT_ATTR, PagedAttentionContext, register
from .attention_plan import KERNEL_ROWS_UP_TO, AttentionPlan
from .cpu_decoder import CPUDecoder, unsupported_reason
from .cpu_kernels import decoder_ops, paged_decode_kernel
from .cpu_linear import MLP_ROWS, PackedLinear, can_pack, pack_linears, slice_mlp_rows
from .device import available_memory_bytes, configure_torch, pick_device
from .kv_pool import KVPool
from .vision import VisionEmbedder

logger = logging.getLogger(__name__)

DUMMY_WEIGHT_SEED = 0  # random weights are the same on every run and in every process


def _eos_token_ids(path: str, config: Any) -> list[int]:
    """EOS ids from generation_config.json (chat models list several there), else the config."""
    eos: Any = None
    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        pass
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _context_length(text_config: Any, override: int | None) -> int:
    if override is not None:
        return override
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError("the model config names no context length; set --max-seq-len-override")


def _kv_shape(text_config: Any, dtype: torch.dtype) -> KVShape:
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return KVShape(text_config.num_hidden_layers, kv_heads, head_dim, dtype, dtype.itemsize)


def _takes_images(model: Any) -> bool:
    return hasattr(model.config, "vision_config") and hasattr(model, "get_image_features")


def _check_positions(config: Any) -> None:
    """Refuse models whose image tokens need multimodal rotary positions (M-RoPE: 3-D
    positions per image patch, Qwen2-VL and its kin): this runner feeds 1-D positions, which
    would give such a model wrong answers without any error."""
    text = config.get_text_config()
    for name in ("rope_scaling", "rope_parameters"):
        rope = getattr(text, name, None)
        if isinstance(rope, dict) and "mrope_section" in rope:
            raise ValueError(f"backend hf: {type(config).__name__} places image tokens with multimodal rotary "
                             "positions (M-RoPE), which minisgl does not compute; LLaVA and Idefics3/SmolVLM "
                             "models work")


class HFModelRunner(ModelRunner):
    """ModelRunner for any transformers causal LM."""

    def __init__(self, settings: Any, model: Any) -> None:
        self.device = pick_device(settings.device)
        configure_torch(settings.matmul_precision)
        config = AutoConfig.from_pretrained(model.path, trust_remote_code=settings.trust_remote_code)
        self.dtype = resolve_dtype(settings.dtype, config, self.device.type)
        if hasattr(config, "vision_config"):
            _check_positions(config)
        self.model = self._load(model, config, settings.trust_remote_code)
        cpu_kernels = self.device.type == "cpu" and settings.hf_cpu_kernels
        if cpu_kernels and can_pack(self.dtype):
            logger.info("Linear layers: oneDNN with packed weights (%d layers); MLPs take long prefills in "
                        "slices of %d rows (%d MLPs)", pack_linears(self.model), MLP_ROWS,
                        slice_mlp_rows(self.model))
        text_config = self.model.config.get_text_config()

        self.name: str = model.name
        self.vocab_size: int = int(text_config.vocab_size)
        self.max_context_len = _context_length(text_config, settings.max_seq_len_override)
        self.eos_token_ids = _eos_token_ids(model.path, text_config)
        self.embedding_size = int(text_config.hidden_size)
        logger.info(
            "Model %s (%s) on %s, dtype %s, context %d tokens, EOS token id(s) %s",
            self.name,
            type(self.model).__name__,
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.max_context_len,
            self.eos_token_ids,
        )

        shape = _kv_shape(text_config, self.dtype)
        free, total = available_memory_bytes(self.device)
        size = size_kv_pool(
            shape, settings.page_size, device=str(self.device), free_bytes=free, total_bytes=total,
            host_memory=self.device.type == "cpu", memory_ratio=settings.memory_ratio, num_pages=settings.num_pages,
            max_running_requests=settings.max_running_requests, context_len=self.max_context_len,
        )
        logger.info("KV pool: %s", size.reason)
        self.pool = KVPool(shape, size.num_pages, settings.page_size, self.device)
        # SDPA's fused kernels win on CUDA/MPS. On a CPU, plain matmuls are as fast in float32,
        # but in bf16/fp16 they round the scores before the softmax: without AVX512-BF16 that
        # made logits 3x further from float32 than transformers' own bf16 forward.
        use_sdpa = settings.enable_sdp and (self.device.type != "cpu" or self.dtype != torch.float32)
        kernel = paged_decode_kernel() if cpu_kernels else None
        if kernel is not None and not kernel.supports(self.dtype):
            kernel = None
        self.context = PagedAttentionContext(self.pool, use_sdpa=use_sdpa, decode_kernel=kernel)
        self._extends_as_rows = kernel is not None and kernel.vector_path(
            int(text_config.num_attention_heads), shape.num_kv_heads, shape.head_dim)
        logger.info("Attention: paged KV pool; decode %s; prefill %s%s",
                    "native CPU kernel, in place" if kernel else "gathered, same as prefill",
                    f"chunks up to {KERNEL_ROWS_UP_TO} tokens on the native kernel, longer ones on "
                    if self._extends_as_rows else "", "torch SDPA" if use_sdpa else "batched matmuls")
        self._attach_context(shape.num_layers)
        self.decoder = self._lean_decoder() if cpu_kernels else None
        # a vision-language model: images go through the same batches and KV pool as text
        self.vision: VisionEmbedder | None = None
        if _takes_images(self.model):
            self.vision = VisionEmbedder(self.model, self.dtype, self.device, self.vocab_size)
            logger.info("Vision: %s takes images; their embeddings replace the image tokens at prefill",
                        type(self.model).__name__)
        self.supports_images = self.vision is not None
        self._no_rows = torch.empty(0, dtype=torch.long, device=self.device)

    def _load(self, model: Any, config: Any, trust_remote_code: bool) -> PreTrainedModel:
        attn = register()
        common = dict(dtype=self.dtype, attn_implementation=attn, trust_remote_code=trust_remote_code)
        # vision-language checkpoints load with their vision tower (their attention modules
        # find no paged context and run SDPA)
        auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
        try:
            if model.dummy:
                logger.info("Building %s with random weights (seed %d)", model.name, DUMMY_WEIGHT_SEED)
                with torch.random.fork_rng(devices=[]), torch.device(self.device):
                    torch.manual_seed(DUMMY_WEIGHT_SEED)
                    lm = auto.from_config(config, **common)
            else:
                logger.info("Loading %s weights from %s", model.name, model.path)
                lm = auto.from_pretrained(model.path, config=config, **common)
        except ValueError as exc:
            if attn in str(exc) or "attention" in str(exc).lower():
                raise ValueError(
                    f"backend hf: {type(config).__name__} models cannot route attention through a custom "
                    f"AttentionInterface function ({exc}); try another --backend"
                ) from exc
            raise
        lm = lm.to(self.device).eval().requires_grad_(False)
        return lm

    def _lean_decoder(self) -> CPUDecoder | None:
        """The lean CPU forward where it computes what transformers computes (logged either way)."""
        ops = decoder_ops(self.dtype)
        reason = "a dtype without native kernels, or no kernel build" if ops is None else unsupported_reason(self.model)
        if reason is None:
            logger.info("Forward: the lean CPU decoder (native RMSNorm and rotary kernels, fused oneDNN epilogues)")
            decoder = CPUDecoder(self.model, ops, self.context)
        else:
            logger.info("Forward: transformers' modules (the lean CPU decoder does not take %s)", reason)
            decoder = None
        if decoder is None or not decoder.gemv_rows:  # only the few-row kernel reads the second copy
            for module in self.model.modules():
                if isinstance(module, PackedLinear):
                    module.gemv_weight = None
        return decoder

    def _attach_context(self, num_layers: int) -> None:
        """Every attention module of the language model finds this runner's pool and plan
        through an attribute (a vision tower's layers keep their own attention)."""
        layers = 0
        text_model = self.model.get_decoder() if _takes_images(self.model) else self.model
        for module in text_model.modules():
            layer_idx = getattr(module, "layer_idx", None)
            if isinstance(layer_idx, int):
                if not 0 <= layer_idx < num_layers:
                    raise ValueError(
                        f"{type(module).__name__}.layer_idx={layer_idx} outside the {num_layers} KV layers"
                    )
                setattr(module, CONTEXT_ATTR, self.context)
                layers += 1
        if layers == 0:
            raise ValueError(f"{type(self.model).__name__}: found no attention modules with a layer_idx")

    def kv_capacity(self) -> int:
        return self.pool.capacity

    def read_kv(self, slots: list[int]) -> torch.Tensor:
        return self.pool.read(to_device(slots, self.device))

    def write_kv(self, slots: list[int], data: torch.Tensor) -> None:
        self.pool.store(to_device(slots, self.device), data)

    def _to_device(self, batch: ForwardBatch) -> ForwardBatch:
        if batch.input_ids.device == self.device:
            return batch
        move = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        batch.input_ids, batch.positions, batch.out_slots = map(
            move, (batch.input_ids, batch.positions, batch.out_slots)
        )
        batch.page_table, batch.sample_indices = move(batch.page_table), move(batch.sample_indices)
        return batch

    @torch.inference_mode()
    def compute_logits(self, batch: ForwardBatch) -> torch.Tensor | None:
        """Run the model on the batch (writing its K/V into the pool); logits [S, V] of the
        sampled rows, or None when nothing is sampled (a mid-prompt chunk: no LM head at all)."""
        return self._run(batch)[0]

    def _run(self, batch: ForwardBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`compute_logits`, and the sums of the final hidden states over batch.pool_spans
        (float32 [len(pool_spans), hidden], None without spans)."""
        batch = self._to_device(batch)
        self.context.plan = AttentionPlan.build(batch, extends_as_rows=self._extends_as_rows)
        rows = batch.sample_indices if batch.sampling is not None else self._no_rows
        if self.decoder is not None and not batch.images:
            try:
                return self.decoder.run(batch.input_ids, batch.positions, rows, batch.pool_spans)
            finally:
                self.context.plan = None
        tokens: dict[str, torch.Tensor] = {"input_ids": batch.input_ids[None]}
        if batch.images:
            assert self.vision is not None, "the engine admits images only when supports_images"
            tokens = {"inputs_embeds": self.vision.inputs_embeds(batch)}
        try:
            out = self.model(
                **tokens,
                position_ids=batch.positions[None],
                use_cache=False,
                logits_to_keep=rows,
                # transformers' last hidden state is after the final norm (hidden_states[-1])
                output_hidden_states=bool(batch.pool_spans),
            )
        finally:
            self.context.plan = None
        pooled = None
        if batch.pool_spans:
            hidden = out.hidden_states[-1][0]
            pooled = torch.stack([hidden[start:end].float().sum(0) for start, end in batch.pool_spans])
        return (out.logits[0] if batch.sampling is not None else None), pooled

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> ForwardResult:
        logits, pooled = self._run(batch)
        if logits is None or batch.sampling is None:
            if pooled is None:  # a mid-prompt chunk: nothing to hand back
                return ForwardResult(next_tokens=self._no_rows)
            result = ForwardResult(next_tokens=self._no_rows, pooled=pooled)
        else:
            result = sample(logits, batch.sampling)
            result.pooled = pooled
        if self.device.type == "cuda":  # let the scheduler prepare the next step meanwhile
            for name in ("next_tokens", "logprobs", "top_logprob_ids", "top_logprob_values", "pooled"):
                value = getattr(result, name)
                if value is not None:
                    setattr(result, name, value.to("cpu", non_blocking=True))
            result.ready = torch.cuda.Event()
            result.ready.record()
        return result

    def shutdown(self) -> None:
        """Drop the weights and the pool so their memory goes back to the device."""
        self.context.plan = None
        for name in ("model", "pool", "context"):
            if hasattr(self, name):
                delattr(self, name)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def create_runner(settings: Any, model: Any) -> HFModelRunner:
    """BackendSpec factory: `create_runner(settings, resolved_model)`."""
    return HFModelRunner(settings, model)
