"""`minisgl bench`: benchmarks against transformers peers.

`minisgl bench offline` runs one seeded workload (N requests, input and output lengths
drawn uniformly from ranges, random token ids, EOS ignored so every request produces its
full output) through minisgl's offline engine and, in the same process, through:
- `hf-sequential`: `model.generate` one request after another;
- `hf-streaming`: the seed's baseline, BENCH_HF_CONCURRENCY threads each running
  `generate` with a TextIteratorStreamer (default 1);
- `hf-cb`: transformers' own continuous batching (`init_continuous_batching`, sdpa
  attention, per-request max_new_tokens, KV blocks sized to the workload).
Throughput is output tokens / wall seconds of the generation phase (model loading and a
short warm-up excluded). The compute floor is the time one forward pass over all the
workload's tokens at once would take at the device's measured matmul speed: model FLOPs
(2 x parameters per token + attention) divided by the FLOP/s of a large bf16/fp32 matmul
timed here.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import click

PEERS = ("hf-sequential", "hf-streaming", "hf-cb")


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


def _range(text: str, flag: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition("-")
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise click.BadParameter(f"expected MIN-MAX, e.g. 50-300, got {text!r}", param_hint=flag) from None
    if a < 1 or b < a:
        raise click.BadParameter(f"need 1 <= MIN <= MAX, got {text!r}", param_hint=flag)
    return a, b


def make_workload(n: int, input_len: tuple[int, int], output_len: tuple[int, int], seed: int, vocab_size: int, special_below: int) -> Workload:
    rng = random.Random(seed)
    lo = min(special_below, vocab_size - 1)
    prompts = [[rng.randrange(lo, vocab_size) for _ in range(rng.randint(*input_len))] for _ in range(n)]
    outs = [rng.randint(*output_len) for _ in range(n)]
    return Workload(prompts, outs)


def _timed(fn: Callable[[], int], name: str) -> Result:
    t0 = time.perf_counter()
    tokens = fn()
    return Result(name, time.perf_counter() - t0, tokens)


# ---- systems -----------------------------------------------------------------------
def run_minisgl(model: str, dtype: str, wl: Workload, settings: dict) -> tuple[Result, dict]:
    from minisgl import LLM, SamplingParams

    with LLM(model=model, dtype=dtype, **settings) as llm:
        llm.generate([wl.prompts[0][:16]], SamplingParams(max_new_tokens=4, temperature=0.0))  # warm-up
        llm.flush_cache()
        params = [SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True) for n in wl.output_lens]

        def go() -> int:
            outs = llm.generate(wl.prompts, params)
            return sum(len(o.token_ids) for o in outs)

        result = _timed(go, "minisgl")
        return result, llm.metrics()


def _hf_device() -> str:
    """The peers run where minisgl's auto backend would: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_hf(path: str, dtype: str, attn: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    kwargs = {"dtype": torch_dtype}
    if attn:
        kwargs["attn_implementation"] = attn
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).to(_hf_device()).eval()


def run_hf_sequential(path: str, dtype: str, wl: Workload) -> Result:
    import torch

    model = _load_hf(path, dtype)

    def go() -> int:
        total = 0
        with torch.inference_mode():
            for ids, n in zip(wl.prompts, wl.output_lens):
                out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=n, min_new_tokens=n, do_sample=False)
                total += out.shape[1] - len(ids)
        return total

    model.generate(torch.tensor([wl.prompts[0][:16]], device=model.device), max_new_tokens=2, do_sample=False)
    return _timed(go, "hf-sequential")


def run_hf_streaming(path: str, dtype: str, wl: Workload, concurrency: int) -> Result:
    """The seed's baseline: threads each running generate() with a TextIteratorStreamer."""
    import torch
    from transformers import AutoTokenizer, TextIteratorStreamer

    model = _load_hf(path, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    work = list(zip(wl.prompts, wl.output_lens))
    lock = threading.Lock()
    produced = [0]

    def one(ids: list[int], n: int) -> None:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        kwargs = dict(input_ids=torch.tensor([ids], device=model.device), max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=streamer)
        failed: list[BaseException] = []

        def generate() -> None:
            try:
                model.generate(**kwargs)
            except BaseException as exc:  # end the stream, or the reader below waits forever
                failed.append(exc)
                streamer.end()

        t = threading.Thread(target=generate)
        t.start()
        for _ in streamer:
            pass
        t.join()
        if failed:
            raise failed[0]
        with lock:
            produced[0] += n

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                ids, n = work.pop(0)
            one(ids, n)

    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            worker()
        except BaseException as exc:
            errors.append(exc)

    def go() -> int:
        threads = [threading.Thread(target=guarded) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return produced[0]

    # cuDNN's fused attention fails under concurrent generate() threads on CUDA
    # ("mha_graph.execute ... is_good()", torch 2.11 / H100): use the other SDPA kernels
    cudnn_sdp = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        return _timed(go, f"hf-streaming(x{concurrency})")
    finally:
        torch.backends.cuda.enable_cudnn_sdp(cudnn_sdp)


def run_hf_cb(path: str, dtype: str, wl: Workload) -> Result:
    """transformers' continuous batching, its paged KV sized to hold the whole workload."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints
    except ImportError:  # older transformers: no hints, the KV size comes from num_blocks alone
        WorkloadHints = None

    model = _load_hf(path, dtype, attn="sdpa")
    page = 32
    blocks = sum(-(-(len(p) + n) // page) for p, n in zip(wl.prompts, wl.output_lens)) + 8
    gen = GenerationConfig(do_sample=False, max_new_tokens=max(wl.output_lens), eos_token_id=-1, pad_token_id=0)
    try:
        cb = ContinuousBatchingConfig(page_size=page, num_blocks=blocks, max_batch_tokens=512)
    except TypeError:  # transformers before 5.2x names the page `block_size`
        cb = ContinuousBatchingConfig(block_size=page, num_blocks=blocks, max_batch_tokens=512)
    extra = {}
    if WorkloadHints is not None:
        extra["workload_hints"] = WorkloadHints(
            max_prompt_length=max(map(len, wl.prompts)), max_generated_length=max(wl.output_lens), num_requests=len(wl.prompts)
        )
    manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb, **extra)
    manager.start()
    try:

        def go() -> int:
            ids = [manager.add_request(p, max_new_tokens=n) for p, n in zip(wl.prompts, wl.output_lens)]
            pending, total = set(ids), 0
            while pending:
                res = manager.get_result(timeout=1.0)
                if res is None:
                    if not manager.is_running():
                        raise RuntimeError("transformers continuous batching stopped early")
                    continue
                if res.is_finished() and res.request_id in pending:
                    pending.discard(res.request_id)
                    total += len(res.generated_tokens)
            return total

        return _timed(go, "hf-cb")
    finally:
        manager.stop(block=True)


# ---- compute floor -------------------------------------------------------------------
def compute_floor(path: str, dtype: str, wl: Workload) -> tuple[float, str]:
    """Seconds the workload's FLOPs take at the matmul speed measured on this device."""
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path).get_text_config()
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    inter = getattr(cfg, "intermediate_size", 4 * h)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", heads) or heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    per_token_params = layers * (h * head_dim * (heads + 2 * kv_heads) + heads * head_dim * h + 3 * h * inter)
    flops = 0.0
    for p, n in zip(wl.prompts, wl.output_lens):
        tokens = len(p) + n
        flops += 2 * per_token_params * tokens + 2 * vocab * h * n  # LM head only for sampled rows
        flops += layers * 4 * heads * head_dim * tokens * tokens / 2  # causal attention scores + values
    device = _hf_device()
    a = torch.randn(1024, h, dtype=torch_dtype, device=device)
    b = torch.randn(h, inter, dtype=torch_dtype, device=device)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    reps, t0 = 20 if device == "cpu" else 200, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    rate = 2 * 1024 * h * inter * reps / (time.perf_counter() - t0)
    how = f"{flops / 1e12:.2f} TFLOP of model math at {rate / 1e9:.1f} GFLOP/s ({str(torch_dtype)[6:]} 1024x{h}x{inter} matmul timed here on {device})"
    return flops / rate, how


def _checkpoint_dtype(path: str) -> str:
    """One dtype for every system: the checkpoint's own (bf16 for smollm2-135m), float32 when
    it says nothing or bf16 has no native support on this CPU (then bf16 matmuls crawl)."""
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    name = str(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "float32").replace("torch.", "")
    if name not in ("float32", "bfloat16", "float16"):
        name = "float32"
    if name == "bfloat16" and not torch.cuda.is_available():
        capability = torch.backends.cpu.get_cpu_capability()
        if "AVX512" not in capability and "AMX" not in capability:
            name = "float32"
    return name


# ---- command -------------------------------------------------------------------------
@click.group()
def bench() -> None:
    """Benchmarks against transformers peers."""


@bench.command()
@click.option("--model", default="smollm2-135m", show_default=True, help="model name or path")
@click.option("--num-requests", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--input-len", default="50-300", show_default=True, help="prompt length range MIN-MAX")
@click.option("--output-len", default="50-200", show_default=True, help="output length range MIN-MAX")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "float32", "bfloat16", "float16"]))
@click.option("--backend", default="auto", show_default=True, help="minisgl backend: auto | hf | torch | sgl | mlx | any registered one")
@click.option("--peers", default="all", show_default=True, help="all | none | comma list of " + ",".join(PEERS))
@click.option("--max-running-requests", type=click.IntRange(min=1), default=None, help="minisgl scheduler limit")
@click.option("--max-prefill-length", type=click.IntRange(min=1), default=None, help="minisgl prefill chunk budget")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="write results JSON here")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="draw tok/s per system (PNG, needs matplotlib)")
def offline(model, num_requests, input_len, output_len, seed, dtype, backend, peers, max_running_requests, max_prefill_length, output, plot) -> None:
    """Offline throughput: minisgl vs transformers on one seeded workload."""
    from rich.console import Console
    from rich.table import Table

    from ..models import resolve_model
    from ..plugins import get_registry

    # quiet the core's and every plugin's loggers (a backend logs from its own package)
    for logger in {"minisgl", *(p.module.split(".")[0] for p in get_registry().loaded())}:
        logging.getLogger(logger).setLevel(os.environ.get("BENCH_LOG_LEVEL", "WARNING").upper())
    console = Console()
    in_rng, out_rng = _range(input_len, "--input-len"), _range(output_len, "--output-len")
    if peers == "all":
        chosen = list(PEERS)
    elif peers == "none":
        chosen = []
    else:
        chosen = [p.strip() for p in peers.split(",") if p.strip()]
        bad = [p for p in chosen if p not in PEERS]
        if bad:
            raise click.BadParameter(f"unknown peer(s) {bad}; choose from {', '.join(PEERS)}", param_hint="--peers")
    concurrency = int(os.environ.get("BENCH_HF_CONCURRENCY", "1"))
    if concurrency < 1:
        raise click.BadParameter("BENCH_HF_CONCURRENCY must be >= 1")

    try:
        path = resolve_model(model, progress=True).path
    except ValueError as exc:  # unknown model or hub unreachable: the message names the alternatives
        raise click.ClickException(str(exc)) from None
    from transformers import AutoConfig, AutoTokenizer

    if dtype == "auto":
        dtype = _checkpoint_dtype(path)

    vocab = AutoConfig.from_pretrained(path).get_text_config().vocab_size
    specials = max(AutoTokenizer.from_pretrained(path).all_special_ids or [0]) + 1
    wl = make_workload(num_requests, in_rng, out_rng, seed, vocab, specials)
    console.print(
        f"workload: {num_requests} requests, input {input_len} ({sum(map(len, wl.prompts))} tokens), "
        f"output {output_len} ({wl.output_tokens} tokens), seed {seed}, EOS ignored"
    )
    settings = {k: v for k, v in {"max_running_requests": max_running_requests, "max_prefill_length": max_prefill_length}.items() if v}
    settings["backend"] = backend
    results: list[Result] = []
    mini, metrics = run_minisgl(model, dtype, wl, settings)
    results.append(mini)
    console.print(f"minisgl: {mini.tokens_per_s:.1f} tok/s ({mini.seconds:.1f} s)")
    runners = {
        "hf-sequential": lambda: run_hf_sequential(path, dtype, wl),
        "hf-streaming": lambda: run_hf_streaming(path, dtype, wl, concurrency),
        "hf-cb": lambda: run_hf_cb(path, dtype, wl),
    }
    for peer in chosen:
        try:
            r = runners[peer]()
        except Exception as exc:  # a peer failing must not lose the others' numbers
            console.print(f"[red]{peer} failed: {type(exc).__name__}: {exc}[/red]")
            continue
        results.append(r)
        console.print(f"{r.system}: {r.tokens_per_s:.1f} tok/s ({r.seconds:.1f} s)")
    floor_s, floor_how = compute_floor(path, dtype, wl)

    table = Table(title=f"offline throughput, {model}, dtype {dtype}")
    for col in ("system", "seconds", "output tokens", "tok/s", "minisgl speed-up"):
        table.add_column(col, justify="right" if col != "system" else "left")
    for r in results:
        ratio = mini.tokens_per_s / r.tokens_per_s if r.tokens_per_s else float("inf")
        table.add_row(r.system, f"{r.seconds:.1f}", str(r.output_tokens), f"{r.tokens_per_s:.1f}", "-" if r is mini else f"{ratio:.2f}x")
    table.add_row("compute floor", f"{floor_s:.1f}", str(wl.output_tokens), f"{wl.output_tokens / floor_s:.1f}", "")
    console.print(table)
    console.print(f"compute floor: {floor_how}")
    if output:
        data = {
            "model": model,
            "dtype": dtype,
            "workload": {"num_requests": num_requests, "input_len": input_len, "output_len": output_len, "seed": seed,
                         "input_tokens": sum(map(len, wl.prompts)), "output_tokens": wl.output_tokens},
            "results": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in results],
            "ratios": {r.system: mini.tokens_per_s / r.tokens_per_s for r in results if r is not mini and r.tokens_per_s},
            "compute_floor": {"seconds": floor_s, "tokens_per_s": wl.output_tokens / floor_s, "how": floor_how},
            "minisgl_metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict)},
            "hf_concurrency": concurrency,
        }
        with open(output, "w") as fh:
            json.dump(data, fh, indent=2)
        console.print(f"results written to {output}")
    if plot:
        draw_plot(plot, results, wl.output_tokens / floor_s, f"{model}, {dtype}, {num_requests} requests")
        console.print(f"plot written to {plot}")

def draw_plot(path: str, results: list[Result], floor_tokens_per_s: float, title: str) -> None:
    """Horizontal bars of tok/s per system, with the compute floor as a dashed line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException("--plot needs matplotlib: pip install matplotlib") from None
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
