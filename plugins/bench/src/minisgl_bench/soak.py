"""`minisgl bench soak`: minutes of mixed traffic against a running server, to show that
nothing leaks and nothing hangs over time (a benchmark, not a test: it reports, it does not
judge timings).

Clients, `concurrency` at a time, each pick one of: a chat stream read to its end, a
non-streaming completion, a stream the client leaves after a few chunks, a structured
(JSON-schema) chat answer, and, with a control endpoint, a control command (metrics,
flush_cache). With `kill_every_s`, an engine replica is killed (SIGKILL; the server must be
on this host) that often, so the supervisor's restarts are part of the run.

The report: requests by outcome, p50/p99 latency per time window, and at the start and the
end (once the server is idle again) the KV pool's use and the resident memory of the server
and engine processes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
KINDS = ("stream", "complete", "disconnect", "structured", "control")
WEIGHTS = (4, 3, 2, 1, 1)


@dataclass
class SoakConfig:
    base_url: str
    minutes: float
    concurrency: int = 8
    model: str | None = None
    max_tokens: int = 64
    kill_every_s: float = 0.0  # 0: kill nothing
    control_endpoint: str | None = None
    server_pid: int | None = None
    window_s: float = 60.0
    seed: int = 0


@dataclass
class SoakRun:
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (finished at, seconds), ok requests
    kills: list[int] = field(default_factory=list)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


async def snapshot(client: httpx.AsyncClient, cfg: SoakConfig) -> dict[str, Any]:
    metrics = (await client.get("/metrics")).json()
    health = (await client.get("/health")).json()
    engines = {str(e["replica"]): rss_bytes(e["pid"]) for e in health.get("engines", []) if e.get("pid")}
    return {
        "kv_used_tokens": metrics.get("kv_used_tokens"),
        "num_running_reqs": metrics.get("num_running_reqs"),
        "inflight": sum(r.get("inflight", 0) for r in metrics.get("replicas", [])),
        "server_rss_bytes": rss_bytes(cfg.server_pid) if cfg.server_pid else None,
        "engine_rss_bytes": engines,
        "engine_restarts": sum(e.get("restarts", 0) for e in health.get("engines", [])),
    }


async def wait_idle(client: httpx.AsyncClient, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = await client.get("/health")
            metrics = (await client.get("/metrics")).json()
            if health.status_code == 200 and not metrics.get("num_running_reqs") and not any(
                    r.get("inflight") for r in metrics.get("replicas", [])):
                return True
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.5)
    return False


def _chat(model: str, content: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


async def one_request(client: httpx.AsyncClient, kind: str, cfg: SoakConfig, model: str, rng: random.Random) -> str:
    """Run one request of `kind`; its outcome's name."""
    tokens = rng.randint(max(1, cfg.max_tokens // 4), cfg.max_tokens)
    prompt = f"Tell me about the number {rng.randint(0, 10**6)}."
    if kind == "complete":
        r = await client.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": tokens})
        return "ok" if r.status_code == 200 else f"http_{r.status_code}_{_code(r)}"
    if kind == "structured":
        body = _chat(model, prompt, tokens, response_format={"type": "json_schema",
                                                              "json_schema": {"name": "a", "schema": SCHEMA}})
        r = await client.post("/v1/chat/completions", json=body)
        return "ok" if r.status_code == 200 else f"http_{r.status_code}_{_code(r)}"
    if kind == "control":
        return await asyncio.to_thread(_control, cfg.control_endpoint, rng.choice(["metrics", "flush_cache"]))
    leave_after = rng.randint(1, 4) if kind == "disconnect" else None
    async with client.stream("POST", "/v1/chat/completions", json=_chat(model, prompt, tokens, stream=True)) as r:
        if r.status_code != 200:
            await r.aread()
            return f"http_{r.status_code}_{_code(r)}"
        chunks, last = 0, ""
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            chunks += 1
            if leave_after is not None and chunks >= leave_after:
                return "left_mid_stream"  # closing the stream aborts the request on the server
            if '"error"' in line:
                last = line
        if last:
            return "stream_error_" + ("engine_unavailable" if "engine_unavailable" in last else "other")
        return "ok"


def _code(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"].get("code") or r.json()["error"].get("type"))
    except Exception:
        return "unparsed"


def _control(endpoint: str | None, command: str) -> str:
    from minisgl.control.client import ControlClient, ControlError

    try:
        with ControlClient(endpoint or "", timeout=30) as control:
            control.call(command)
        return "control_ok"
    except ControlError as exc:
        return "control_error" if "no reply" not in str(exc) else "control_no_reply"


async def client_loop(client: httpx.AsyncClient, cfg: SoakConfig, model: str, run: SoakRun, deadline: float,
                      rng: random.Random) -> None:
    kinds = KINDS if cfg.control_endpoint else KINDS[:-1]
    weights = WEIGHTS[:len(kinds)]
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        started = time.monotonic()
        try:
            outcome = await one_request(client, kind, cfg, model, rng)
        except httpx.HTTPError as exc:
            outcome = f"transport_{type(exc).__name__}"
        run.outcomes[f"{kind}:{outcome}"] += 1
        if outcome in ("ok", "control_ok"):
            run.latencies.append((time.monotonic(), time.monotonic() - started))


async def killer(client: httpx.AsyncClient, cfg: SoakConfig, run: SoakRun, deadline: float, rng: random.Random) -> None:
    while time.monotonic() + cfg.kill_every_s < deadline:
        await asyncio.sleep(cfg.kill_every_s)
        try:
            engines = [e for e in (await client.get("/health")).json()["engines"] if e["state"] == "ready" and e["pid"]]
        except (httpx.HTTPError, KeyError, ValueError):
            continue
        if engines:
            victim = rng.choice(engines)["pid"]
            try:
                os.kill(victim, signal.SIGKILL)
                run.kills.append(victim)
            except ProcessLookupError:
                pass


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def windows(run: SoakRun, started: float, window_s: float) -> list[dict[str, Any]]:
    by_window: dict[int, list[float]] = {}
    for at, seconds in run.latencies:
        by_window.setdefault(int((at - started) // window_s), []).append(seconds)
    return [{"from_s": i * window_s, "requests": len(v), "p50_s": percentile(v, 0.5), "p99_s": percentile(v, 0.99)}
            for i, v in sorted(by_window.items())]


async def soak(cfg: SoakConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    limits = httpx.Limits(max_connections=cfg.concurrency + 4)
    async with httpx.AsyncClient(base_url=cfg.base_url, timeout=300, limits=limits) as client:
        model = cfg.model or (await client.get("/v1/models")).json()["data"][0]["id"]
        if not await wait_idle(client):
            raise RuntimeError(f"{cfg.base_url} is not serving and idle")
        start = await snapshot(client, cfg)
        run = SoakRun()
        started = time.monotonic()
        deadline = started + cfg.minutes * 60
        tasks = [client_loop(client, cfg, model, run, deadline, random.Random(rng.random()))
                 for _ in range(cfg.concurrency)]
        if cfg.kill_every_s > 0:
            tasks.append(killer(client, cfg, run, deadline, random.Random(rng.random())))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        idle = await wait_idle(client)
        end = await snapshot(client, cfg)
    total = sum(run.outcomes.values())
    return {
        "base_url": cfg.base_url, "model": model, "minutes": round(elapsed / 60, 2), "concurrency": cfg.concurrency,
        "requests": total, "outcomes": dict(sorted(run.outcomes.items())), "engines_killed": len(run.kills),
        "latency_windows": windows(run, started, cfg.window_s),
        "start": start, "end": end, "idle_at_end": idle,
        "kv_matches": idle and start["kv_used_tokens"] == end["kv_used_tokens"] and end["inflight"] == 0,
    }
