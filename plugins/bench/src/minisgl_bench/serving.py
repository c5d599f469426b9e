"""`minisgl bench serving`: an OpenAI-compatible server under load, measured from outside, in
the manner of sglang's bench_serving and vLLM's serving benchmark.

Requests go to POST /v1/completions as token ids (exact prompt lengths on any server that
takes them, as vLLM and sglang do), streamed, greedy, EOS ignored, `max_tokens` the
request's output length. They arrive as a Poisson process (`--request-rate`, inf: all at
once) under at most `--max-concurrency` in flight. Per request: TTFT (to the first token),
ITL (between tokens), TPOT ((latency - TTFT) / (output tokens - 1)) and latency. With
`--backend minisgl` the server's /metrics is read before and after, for the share of
prompt tokens served from the prefix cache.

Datasets: `random` (lengths uniform in the input and output ranges, random token ids) and
`shared-prefix` (groups of requests whose prompts start with the same long system prompt).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

PERCENTILES = (50, 90, 99)


@dataclass
class BenchRequest:
    prompt: list[int]
    output_len: int


@dataclass
class RequestResult:
    ok: bool
    prompt_len: int
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)  # seconds between successive token chunks
    chunk_times: list[float] = field(default_factory=list)  # each token chunk's arrival, seconds since the run began
    error: str = ""  # the failure's kind: an HTTP status with the server's code, or the exception
    started: float = 0.0  # seconds since the run began

    @property
    def tpot(self) -> float | None:
        return (self.latency - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


def random_dataset(n: int, input_len: tuple[int, int], output_len: tuple[int, int], vocab: Sequence[int],
                   seed: int) -> list[BenchRequest]:
    rng = random.Random(seed)
    lens = [rng.randint(*input_len) for _ in range(n)]  # all input lengths first, then the outputs
    outs = [rng.randint(*output_len) for _ in range(n)]
    return [BenchRequest(rng.choices(vocab, k=k), o) for k, o in zip(lens, outs)]


def shared_prefix_dataset(n: int, groups: int, system_len: int, question_len: tuple[int, int],
                          output_len: tuple[int, int], vocab: Sequence[int], seed: int) -> list[BenchRequest]:
    """`groups` system prompts of `system_len` tokens, each followed by its own questions;
    the requests of all groups interleave, so the cache must hold several prefixes at once."""
    rng = random.Random(seed)
    prefixes = [rng.choices(vocab, k=system_len) for _ in range(groups)]
    out = []
    for i in range(n):
        question = rng.choices(vocab, k=rng.randint(*question_len))
        out.append(BenchRequest(prefixes[i % groups] + question, rng.randint(*output_len)))
    return out


async def _one(client: httpx.AsyncClient, url: str, model: str, req: BenchRequest, t0: float,
               extra: dict[str, Any]) -> RequestResult:
    body = {"model": model, "prompt": req.prompt, "max_tokens": req.output_len, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True, **extra}
    result = RequestResult(ok=False, prompt_len=len(req.prompt))
    start = time.perf_counter()
    result.started = start - t0
    last = start
    chunks = 0
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                try:
                    code = json.loads(text)["error"].get("code") or json.loads(text)["error"].get("type")
                except (ValueError, KeyError, TypeError, AttributeError):
                    code = None
                result.error = f"HTTP {resp.status_code}" + (f" {code}" if code else "")
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    result.error = f"stream error {event['error'].get('code') or event['error'].get('type')}"
                    return result
                if event.get("usage"):
                    result.output_tokens = int(event["usage"].get("completion_tokens") or 0)
                if any(c.get("text") for c in event.get("choices", [])):
                    now = time.perf_counter()
                    if chunks == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                    chunks += 1
                    result.chunk_times.append(now - t0)
    except (httpx.HTTPError, ValueError) as exc:
        result.error = type(exc).__name__
        return result
    result.latency = time.perf_counter() - start
    result.output_tokens = result.output_tokens or chunks
    result.ok = chunks > 0
    if not result.ok:
        result.error = "no tokens"
    return result


async def run_load(base_url: str, model: str, requests: list[BenchRequest], *, request_rate: float,
                   max_concurrency: int | None, seed: int, extra: dict[str, Any] | None = None,
                   progress: Any = None, timeout_s: float = 600.0) -> tuple[list[RequestResult], float]:
    """Send every request (Poisson arrivals at `request_rate`/s, at most `max_concurrency` in
    flight); the results in request order, and the wall seconds of the whole run."""
    rng = random.Random(seed)
    limit = asyncio.Semaphore(max_concurrency or len(requests))
    url = base_url.rstrip("/") + "/v1/completions"
    limits = httpx.Limits(max_connections=max_concurrency or len(requests) or 1, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits) as client:
        t0 = time.perf_counter()

        async def guarded(req: BenchRequest) -> RequestResult:
            async with limit:
                res = await _one(client, url, model, req, t0, extra or {})
            if progress is not None:
                progress()
            return res

        tasks = []
        for req in requests:
            tasks.append(asyncio.create_task(guarded(req)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - t0


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, **{f"p{p}": 0.0 for p in PERCENTILES}}
    ordered = sorted(values)

    def pct(p: int) -> float:
        k = (len(ordered) - 1) * p / 100
        lo = int(k)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)

    return {"mean": statistics.fmean(ordered), **{f"p{p}": pct(p) for p in PERCENTILES}}


def summarize(results: list[RequestResult], seconds: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    inputs = sum(r.prompt_len for r in ok)
    outputs = sum(r.output_tokens for r in ok)
    ms = lambda xs: {k: v * 1000 for k, v in _stats(xs).items()}  # noqa: E731
    return {
        "duration_s": seconds,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "failures": dict(Counter(r.error for r in results if not r.ok)),
        "input_tokens": inputs,
        "output_tokens": outputs,
        "request_throughput": len(ok) / seconds if seconds else 0.0,
        "input_throughput": inputs / seconds if seconds else 0.0,
        "output_throughput": outputs / seconds if seconds else 0.0,
        "total_throughput": (inputs + outputs) / seconds if seconds else 0.0,
        "ttft_ms": ms([r.ttft for r in ok]),
        "tpot_ms": ms([t for r in ok if (t := r.tpot) is not None]),
        "itl_ms": ms([x for r in ok for x in r.itl]),
        "latency_ms": ms([r.latency for r in ok]),
    }


async def server_metrics(base_url: str) -> dict[str, Any] | None:
    """minisgl's /metrics (JSON), or None when the server is not ours or does not answer."""
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(base_url.rstrip("/") + "/metrics", params={"format": "json"})
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def cached_share(before: dict[str, Any] | None, after: dict[str, Any] | None) -> float | None:
    """Of the prompt tokens the server saw during the run, the share read from its prefix cache."""
    if not before or not after:
        return None
    prompt = after.get("prompt_tokens_total", 0) - before.get("prompt_tokens_total", 0)
    cached = after.get("cached_tokens_total", 0) - before.get("cached_tokens_total", 0)
    return cached / prompt if prompt > 0 else None


def speculation(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float] | None:
    """Speculative decoding over the run (counter deltas): drafts proposed and accepted, verify
    steps, the acceptance rate and the tokens a drafted request gained per verify step; None
    when nothing was drafted."""
    if not after:
        return None
    delta = {k: after.get(k, 0) - (before or {}).get(k, 0)
             for k in ("spec_draft_tokens_total", "spec_accepted_tokens_total", "spec_verify_steps_total")}
    drafted, kept, steps = delta.values()
    if not drafted:
        return None
    return {"draft_tokens": drafted, "accepted_tokens": kept, "verify_steps": steps,
            "acceptance_rate": kept / drafted, "mean_accepted_length": (kept + steps) / steps if steps else 0.0}


def speculation_line(spec: dict[str, float]) -> str:
    return (f"speculative decoding: {spec['acceptance_rate']:.0%} of {spec['draft_tokens']:.0f} drafted tokens accepted, "
            f"{spec['mean_accepted_length']:.2f} tokens per verify step")


def output_rate(results: list[RequestResult], buckets: int = 40) -> tuple[list[float], list[float]]:
    """Output tokens per second over the run, counted when they arrive: each request's
    tokens spread over its streamed chunks (a chunk may carry several). Bucket centres (s)
    and rates."""
    arrivals = [(t, r.output_tokens / len(r.chunk_times)) for r in results if r.ok and r.chunk_times
                for t in r.chunk_times]
    if not arrivals:
        return [], []
    horizon = max(t for t, _ in arrivals)
    buckets = max(1, min(buckets, len(arrivals)))
    width = horizon / buckets or 1.0
    rates = [0.0] * buckets
    for t, tokens in arrivals:
        rates[min(buckets - 1, int(t / width))] += tokens / width
    return [width * (i + 0.5) for i in range(buckets)], rates


def draw_plot(path: str, results: list[RequestResult], title: str) -> None:
    """Latency distributions (TTFT, TPOT, ITL, latency) with their p50/p90/p99, and output
    throughput over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from exc
    ok = [r for r in results if r.ok]
    series = {"TTFT (ms)": [r.ttft * 1000 for r in ok], "TPOT (ms)": [t * 1000 for r in ok if (t := r.tpot)],
              "ITL (ms)": [x * 1000 for r in ok for x in r.itl], "latency (s)": [r.latency for r in ok]}
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.4))
    for ax, (name, values) in zip(axes, series.items()):
        positive = [v for v in values if v > 0]
        if name == "ITL (ms)" and positive:
            # gaps span orders of magnitude (a batch's decode step against a prefill stall): log bins
            lo, hi = min(positive), max(positive)
            edges = [lo * (hi / lo) ** (i / 30) for i in range(31)] if hi > lo else 30
            ax.hist(positive, bins=edges, color="#4c72b0")
            ax.set_xscale("log")
        else:
            ax.hist(values or [0], bins=30, color="#4c72b0")
        stats = _stats(values)
        for p, style in zip(PERCENTILES, (":", "--", "-")):
            if stats[f"p{p}"] > 0:
                ax.axvline(stats[f"p{p}"], color="#c44e52", linestyle=style, linewidth=1, label=f"p{p}")
        if values:
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("requests" if name != "ITL (ms)" else "tokens")
    centres, rates = output_rate(ok)
    if centres:
        axes[4].plot(centres, rates, color="#dd8452")
    axes[4].set_title("output tok/s over the run", fontsize=10)
    axes[4].set_xlabel("s")
    fig.suptitle(f"minisgl bench serving: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
