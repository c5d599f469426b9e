"""The roofline floor of an offline workload: the least time this hardware needs for it,
from two ceilings measured in the same process at start.

- Ceilings: the device's copy bandwidth (a large tensor copy, read + write bytes) and its
  matmul rate (a large matmul in the workload's dtype), each the best of several windows.
- Prefill: every prompt token's model FLOPs (2 x parameters, plus causal attention) at the
  matmul rate.
- Decode, with every request running from the start (the most a schedule can share one
  read of the weights): step s reads all weights once and the K/V of each running request's
  context, and does 2 x parameters FLOPs per running request (plus attention over its
  context, and the LM head); it takes the longer of its bytes at the bandwidth and its
  FLOPs at the matmul rate. In a mixture-of-experts model a token runs its top-k experts
  only, and a step reads the experts its batch routes to: of E experts, B tokens reach
  E x (1 - (1 - k/E)^B) on average when routing is uniform.

On a GPU decode is bound by bytes; on a CPU mostly by FLOPs. `efficiency` is the floor's
time over the measured time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ceilings:
    device: str
    bandwidth: float  # bytes/s, a device copy counting the bytes read and written
    flops: float  # FLOP/s of a large matmul in the workload's dtype

    def describe(self) -> str:
        return f"{self.device}: copy {self.bandwidth / 1e9:.1f} GB/s, matmul {self.flops / 1e12:.2f} TFLOP/s"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def best_seconds(fn: Any, device: str, reps: int, windows: int = 6) -> float:
    for _ in range(2):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def measure_ceilings(device: str, dtype: Any, hidden: int = 4096, inter: int = 11008) -> Ceilings:
    """Copy bandwidth and matmul rate of `device`; the best window is the hardware's rate,
    not whatever else the machine was doing."""
    import torch

    n = (1 << 30 if device == "cuda" else 1 << 27) // 4  # 1 GiB on a GPU, 128 MiB on a CPU: past every cache
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    copy_s = best_seconds(lambda: dst.copy_(src), device, reps=10 if device == "cuda" else 3)
    rows = 4096 if device == "cuda" else 1024
    a = torch.randn(rows, hidden, dtype=dtype, device=device)
    b = torch.randn(hidden, inter, dtype=dtype, device=device)
    matmul_s = best_seconds(lambda: a @ b, device, reps=20 if device == "cuda" else 2)
    return Ceilings(device, 2 * src.numel() * 4 / copy_s, 2 * rows * hidden * inter / matmul_s)


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    head_dim: int
    params: float  # parameters a token runs through, the LM head's included (its routed experts only)
    lm_head_params: float  # of which the LM head's
    weight_bytes: float  # every weight a decode step reads whatever its batch (all of them, but the experts)
    kv_bytes_per_token: float  # K and V of one token in every layer
    experts: int = 0  # a mixture of experts: how many per sparse layer,
    experts_per_token: int = 0  # how many route per token,
    expert_bytes: float = 0.0  # and one expert's bytes over every sparse layer

    def step_weight_bytes(self, batch: int) -> float:
        """The weights a decode step of `batch` tokens reads."""
        if not self.experts:
            return self.weight_bytes
        reached = self.experts * (1 - (1 - self.experts_per_token / self.experts) ** batch)
        return self.weight_bytes + reached * self.expert_bytes

    @classmethod
    def of(cls, path: str, dtype: Any) -> ModelShape:
        import torch
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(path).get_text_config()
        item = torch.empty((), dtype=dtype).element_size()
        h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or h // heads
        inter = getattr(cfg, "intermediate_size", 4 * h)
        attention = h * head_dim * (heads + 2 * kv_heads) + heads * head_dim * h
        embed = vocab * h * (1 if getattr(cfg, "tie_word_embeddings", False) else 2)
        kv = layers * 2 * kv_heads * head_dim * item
        experts = getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None) or 0
        if not experts:
            per_layer = attention + 3 * h * inter
            return cls(layers, h, heads, head_dim, params=layers * per_layer + vocab * h, lm_head_params=vocab * h,
                       weight_bytes=(layers * per_layer + embed) * item, kv_bytes_per_token=kv)
        top_k, expert_inter = cfg.num_experts_per_tok, cfg.moe_intermediate_size
        dense = set(getattr(cfg, "mlp_only_layers", None) or ())
        step = getattr(cfg, "decoder_sparse_step", 1) or 1
        sparse = sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)
        shared = layers * attention + (layers - sparse) * 3 * h * inter + sparse * h * experts  # routers too
        expert = 3 * h * expert_inter
        return cls(layers, h, heads, head_dim, params=shared + sparse * top_k * expert + vocab * h,
                   lm_head_params=vocab * h, weight_bytes=(shared + embed) * item, kv_bytes_per_token=kv, experts=experts,
                   experts_per_token=top_k, expert_bytes=sparse * expert * item)

    def attention_flops(self, context: int) -> float:
        """Scores and values of one query over `context` keys, every layer."""
        return 4.0 * self.layers * self.heads * self.head_dim * context


@dataclass(frozen=True)
class Floor:
    seconds: float
    prefill_seconds: float
    decode_seconds: float
    decode_bytes_bound_steps: int  # decode steps whose bytes, not FLOPs, set their time
    decode_steps: int
    ceilings: Ceilings

    def tokens_per_s(self, output_tokens: int) -> float:
        return output_tokens / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        return (f"roofline floor {self.seconds:.2f} s: prefill {self.prefill_seconds:.2f} s at the matmul rate, "
                f"{self.decode_steps} decode steps {self.decode_seconds:.2f} s "
                f"({self.decode_bytes_bound_steps} bound by bytes); {self.ceilings.describe()}")


def roofline_floor(shape: ModelShape, prompt_lens: list[int], output_lens: list[int], ceilings: Ceilings) -> Floor:
    prefill_flops = sum(2 * shape.params * n + shape.attention_flops(n) * n / 2 for n in prompt_lens)
    prefill_s = prefill_flops / ceilings.flops
    decode_s, bytes_bound = 0.0, 0
    steps = max(output_lens, default=0)
    # the first output token comes from the prefill; decode step s runs the requests that still
    # have more than s + 1 tokens to produce, each over its context so far
    for s in range(steps - 1):
        contexts = [p + s + 1 for p, n in zip(prompt_lens, output_lens) if n > s + 1]
        if not contexts:
            break
        read = shape.step_weight_bytes(len(contexts)) + shape.kv_bytes_per_token * sum(contexts)
        flops = 2 * shape.params * len(contexts) + sum(shape.attention_flops(c) for c in contexts)
        memory_s, compute_s = read / ceilings.bandwidth, flops / ceilings.flops
        bytes_bound += memory_s >= compute_s
        decode_s += max(memory_s, compute_s)
    return Floor(prefill_s + decode_s, prefill_s, decode_s, bytes_bound, max(steps - 1, 0), ceilings)
