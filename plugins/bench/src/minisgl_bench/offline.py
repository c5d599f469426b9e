"""`minisgl bench offline`: one seeded workload (N requests, input and output lengths drawn
uniformly from ranges, random token ids, EOS ignored so every request produces its full
output) through minisgl's offline engine and, in the same process, the transformers peers
(hf_peers.py). Throughput is output tokens / wall seconds of the generation phase (model
loading and a warm-up excluded; on a GPU the warm-up prefills every prompt once). The
compute floor is the time the workload's model FLOPs (2 x parameters per token +
attention) take at the FLOP/s of a large bf16/fp32 matmul timed here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)


@dataclass
class Result:
    system: str
    seconds: float
    output_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0


def make_workload(n: int, input_len: tuple[int, int], output_len: tuple[int, int], seed: int, vocab_size: int, special_below: int) -> Workload:
    rng = random.Random(seed)
    lo = min(special_below, vocab_size - 1)
    prompts = [[rng.randrange(lo, vocab_size) for _ in range(rng.randint(*input_len))] for _ in range(n)]
    outs = [rng.randint(*output_len) for _ in range(n)]
    return Workload(prompts, outs)


# the GPU workload of sglang's and vLLM's offline comparisons: 256 requests, input and
# output lengths uniform in [100, 1024] from random.seed(0) (the 256 input lengths first,
# then the 256 output lengths), random token ids, greedy, EOS ignored
W1 = {"num_requests": 256, "input_len": (100, 1024), "output_len": (100, 1024), "seed": 0}


def make_w1(vocab_size: int, special_below: int) -> Workload:
    rng = random.Random(W1["seed"])
    n = W1["num_requests"]
    inputs = [rng.randint(*W1["input_len"]) for _ in range(n)]
    outputs = [rng.randint(*W1["output_len"]) for _ in range(n)]
    lo = min(special_below, vocab_size - 1)
    return Workload([[rng.randrange(lo, vocab_size) for _ in range(k)] for k in inputs], outputs)


def timed(fn: Callable[[], int], name: str) -> Result:
    t0 = time.perf_counter()
    tokens = fn()
    return Result(name, time.perf_counter() - t0, tokens)


def run_minisgl(model: str, dtype: str, wl: Workload, settings: dict) -> tuple[Result, dict]:
    from minisgl import LLM, SamplingParams

    with LLM(model=model, dtype=dtype, **settings) as llm:
        warm = SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True)
        if llm.engine.runner.device.type == "cuda":
            # the workload's own prefills once, untimed: a GPU backend's JIT kernels (Triton)
            # compile per shape class on first sight, which a server pays once at start
            llm.generate(wl.prompts, warm)
        else:
            llm.generate([wl.prompts[0][:16]], warm)
        llm.flush_cache()
        params = [SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True) for n in wl.output_lens]

        def go() -> int:
            outs = llm.generate(wl.prompts, params)
            return sum(len(o.token_ids) for o in outs)

        result = timed(go, "minisgl")
        return result, llm.metrics()


def compute_floor(path: str, dtype: str, wl: Workload) -> tuple[float, str]:
    """Seconds the workload's FLOPs take at the matmul speed measured on this device."""
    import torch
    from transformers import AutoConfig

    from .hf_peers import hf_device
    from .roofline import ModelShape, best_seconds

    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    shape = ModelShape.of(path, torch_dtype)
    body = shape.params - shape.lm_head_params
    flops = 0.0
    for p, n in zip(wl.prompts, wl.output_lens):
        tokens = len(p) + n
        flops += 2 * body * tokens + 2 * shape.lm_head_params * n  # LM head only for sampled rows
        flops += shape.attention_flops(tokens) * tokens / 2  # causal attention scores + values
    cfg = AutoConfig.from_pretrained(path).get_text_config()
    h, inter = cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    device = hf_device()
    a = torch.randn(1024, h, dtype=torch_dtype, device=device)
    b = torch.randn(h, inter, dtype=torch_dtype, device=device)
    rate = 2 * 1024 * h * inter / best_seconds(lambda: a @ b, device, reps=5 if device == "cpu" else 50)
    how = f"{flops / 1e12:.2f} TFLOP of model math at {rate / 1e9:.1f} GFLOP/s ({str(torch_dtype)[6:]} 1024x{h}x{inter} matmul timed here on {device})"
    return flops / rate, how


def checkpoint_dtype(path: str) -> str:
    """One dtype for every system: what `--dtype auto` serves this checkpoint in here."""
    import torch
    from transformers import AutoConfig

    from minisgl.dtypes import auto_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return str(auto_dtype(AutoConfig.from_pretrained(path), device)).removeprefix("torch.")


def draw_plot(path: str, results: list[Result], floor_tokens_per_s: float, title: str) -> None:
    """Horizontal bars of tok/s per system, with the compute floor as a dashed line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    names = [r.system for r in results][::-1]
    rates = [r.tokens_per_s for r in results][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(results) + 1.5))
    bars = ax.barh(names, rates, color=["#4c72b0" if n != "minisgl" else "#dd8452" for n in names])
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in rates], padding=3)
    ax.axvline(floor_tokens_per_s, linestyle="--", color="gray")
    ax.text(floor_tokens_per_s, -0.45, "compute floor ", color="gray", va="bottom", ha="right")
    ax.set_xlabel("output tokens / s (higher is better)")
    ax.set_xlim(0, max(max(rates), floor_tokens_per_s) * 1.15)
    ax.set_title(f"minisgl bench offline\n{title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
