"""What --num-tokenizer buys: short streaming chats while other clients send long prompts.

    python server/bench/tokenizer_workers.py --model smollm2-135m --workers 0,2

For each worker count it starts `minisgl serve`, then runs `--long-clients` clients that
each send long completion prompts (tokenizing them is the load; most exceed the context
and are answered 400 after tokenization) next to `--short-clients` clients streaming short
chat answers, for `--seconds`. It prints the short requests' time to first token and the
latency of /health (the event loop's responsiveness), as p50 / p99, per worker count."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parents[2] / "tests"))
from server_process import start_server


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else (values or [float("nan")])[0]


async def run_load(url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    stop_at = time.perf_counter() + args.seconds
    ttft: list[float] = []
    health: list[float] = []
    long_done = [0]
    long_prompt = ("the quick brown fox jumps over the lazy dog " * (args.long_chars // 44 + 1))[: args.long_chars]

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def short() -> None:
            body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": True}
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                first = None
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if first is None and '"content":"' in line and '"content":""' not in line:
                            first = time.perf_counter() - start
                if first is not None:
                    ttft.append(first)

        async def long() -> None:
            while time.perf_counter() < stop_at:
                await client.post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 1})
                long_done[0] += 1

        async def probe() -> None:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                await client.get("/health")
                health.append(time.perf_counter() - start)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(short() for _ in range(args.short_clients)), *(long() for _ in range(args.long_clients)),
                             probe())
    return {"ttft": ttft, "health": health, "long": [float(long_done[0])]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--workers", default="0,2", help="comma-separated --num-tokenizer values")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--short-clients", type=int, default=4)
    p.add_argument("--long-clients", type=int, default=2)
    p.add_argument("--long-chars", type=int, default=200_000)
    args = p.parse_args()
    from minisgl.models import resolve_model

    path = str(resolve_model(args.model, progress=False).path)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"model {args.model}, {args.short_clients} short streaming chats + {args.long_clients} clients sending "
          f"{args.long_chars}-character prompts for {args.seconds:.0f}s each, git {rev}")
    print(f"{'--num-tokenizer':>15}  {'short req':>9}  {'TTFT p50':>9}  {'TTFT p99':>9}  {'/health p50':>11}  "
          f"{'/health p99':>11}  {'long prompts':>12}")
    for n in (int(x) for x in args.workers.split(",")):
        srv = start_server(path, "--backend", "hf", "--num-tokenizer", str(n), "--log-level", "WARNING",
                           log_dir=Path("/tmp"))
        try:
            r = asyncio.run(run_load(srv.url, args))
        finally:
            srv.stop()
        print(f"{n:>15}  {len(r['ttft']):>9}  {pct(r['ttft'], 50) * 1e3:>7.0f}ms  {pct(r['ttft'], 99) * 1e3:>7.0f}ms  "
              f"{pct(r['health'], 50) * 1e3:>9.1f}ms  {pct(r['health'], 99) * 1e3:>9.1f}ms  {int(r['long'][0]):>12}")


if __name__ == "__main__":
    main()
