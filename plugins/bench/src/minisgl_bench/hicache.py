"""`minisgl bench hicache`: the hierarchical cache on a multi-turn workload, in one process.

The workload: `conversations` chats that share one long system prompt, each `turns` turns
of a user message and the model's answer (greedy, EOS ignored), the history growing every
turn. Turns go in waves of `concurrency` chats, every chat's turn t before any chat's turn
t+1, so with more chats than the device pool holds, a chat's history has left the pool by
its next turn: without the tiers it is prefilled again, with them it is copied back.

Each mode runs the whole workload on a fresh engine: prefill tokens computed (prompt tokens
less cached ones), tokens served from each tier, TTFT p50/p99 (from a wave's submission to
a request's first token) and output tokens/s. Then a restart: a fresh engine on the disk
tier the `disk` mode left (warm) and one on an empty directory (cold) each answer the next
turn of one chat: its TTFT and prefill tokens computed.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

MODES = ("off", "host", "disk")  # no tiers; the host tier; host and disk tiers


@dataclass
class Workload:
    system: list[int]
    users: list[list[list[int]]]  # [chat][turn]: the user message's token ids (one more for the restart)
    output_len: int
    concurrency: int
    turns: int

    @property
    def conversations(self) -> int:
        return len(self.users)

    def final_context(self) -> int:
        """Tokens of a chat's last prompt."""
        return len(self.system) + sum(len(u) for u in self.users[0][: self.turns]) + self.output_len * (self.turns - 1)


def make_workload(conversations: int, turns: int, system_len: int, user_len: int, output_len: int,
                  concurrency: int, vocab_size: int, seed: int, special_below: int = 0) -> Workload:
    rng = random.Random(seed)
    # ids above the special tokens, unless those fill the vocabulary (a test's tiny model)
    low = special_below if special_below < vocab_size // 2 else 1

    def ids(n: int) -> list[int]:
        return [rng.randrange(low, vocab_size) for _ in range(n)]

    return Workload(ids(system_len), [[ids(user_len) for _ in range(turns + 1)] for _ in range(conversations)],
                    output_len, concurrency, turns)


@dataclass
class ModeResult:
    mode: str
    seconds: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    host_hit_tokens: int = 0
    disk_hit_tokens: int = 0
    output_tokens: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    outputs: list[list[list[int]]] = field(default_factory=list)  # [chat][turn]

    @property
    def prefill_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "prefill_tokens": self.prefill_tokens, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "host_hit_tokens": self.host_hit_tokens,
                "disk_hit_tokens": self.disk_hit_tokens, "ttft_ms": percentiles(self.ttft_ms),
                "output_tok_s": self.output_tokens / self.seconds if self.seconds else 0.0,
                "seconds": self.seconds}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0}
    if len(values) == 1:
        return {"p50": values[0], "p99": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": statistics.median(values), "p99": q[98]}


def _prompt(w: Workload, history: list[int], chat: int, turn: int) -> list[int]:
    return w.system + history + w.users[chat][turn]


def _wave(llm: Any, prompts: list[list[int]], output_len: int) -> tuple[list[list[int]], list[float]]:
    """One batch: each prompt's output ids and its time to first token (ms)."""
    from minisgl import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=output_len, ignore_eos=True)
    outs: list[list[int]] = [[] for _ in prompts]
    ttft: list[float | None] = [None] * len(prompts)
    start = time.perf_counter()
    for delta in llm.stream(prompts, params):
        if ttft[delta.prompt_index] is None and delta.token_ids:
            ttft[delta.prompt_index] = (time.perf_counter() - start) * 1000
        outs[delta.prompt_index].extend(delta.token_ids)
    return outs, [t or 0.0 for t in ttft]


def _counters(llm: Any) -> dict[str, int]:
    m = llm.metrics()
    keys = ("prompt_tokens_total", "cached_tokens_total", "hicache_host_hit_tokens_total",
            "hicache_disk_hit_tokens_total", "generation_tokens_total")
    return {k: int(m.get(k, 0) or 0) for k in keys}


def run_mode(llm: Any, w: Workload, mode: str) -> tuple[ModeResult, list[list[int]]]:
    """The whole workload through `llm`; the result and each chat's history at the end."""
    result = ModeResult(mode, outputs=[[] for _ in range(w.conversations)])
    histories: list[list[int]] = [[] for _ in range(w.conversations)]
    before = _counters(llm)
    start = time.perf_counter()
    for turn in range(w.turns):
        for first in range(0, w.conversations, w.concurrency):
            chats = list(range(first, min(first + w.concurrency, w.conversations)))
            outs, ttft = _wave(llm, [_prompt(w, histories[c], c, turn) for c in chats], w.output_len)
            result.ttft_ms += ttft
            for c, out in zip(chats, outs, strict=True):
                histories[c] += w.users[c][turn] + out
                result.outputs[c].append(out)
    result.seconds = time.perf_counter() - start
    _fill(result, before, _counters(llm))
    return result, histories


def _fill(result: ModeResult, before: dict[str, int], after: dict[str, int]) -> None:
    d = {k: after[k] - before[k] for k in after}
    result.prompt_tokens, result.cached_tokens = d["prompt_tokens_total"], d["cached_tokens_total"]
    result.host_hit_tokens, result.disk_hit_tokens = d["hicache_host_hit_tokens_total"], d["hicache_disk_hit_tokens_total"]
    result.output_tokens = d["generation_tokens_total"]


def first_after_restart(llm: Any, w: Workload, history: list[int], mode: str) -> ModeResult:
    """The next turn of chat 0 on a just-started engine, warmed up as a server's is (one
    unrelated request, then the device cache and host tier flushed; the disk tier stays)."""
    _wave(llm, [w.system[::-1][:8]], 2)
    llm.flush_cache()
    result = ModeResult(mode)
    before = _counters(llm)
    start = time.perf_counter()
    outs, ttft = _wave(llm, [_prompt(w, history, 0, w.turns)], w.output_len)
    result.seconds = time.perf_counter() - start
    result.ttft_ms, result.outputs = ttft, [outs]
    _fill(result, before, _counters(llm))
    return result


def mode_settings(mode: str, storage_dir: str) -> dict[str, Any]:
    if mode == "off":
        return {}
    tiers: dict[str, Any] = {"enable_hierarchical_cache": True}
    if mode == "disk":
        tiers |= {"hicache_storage_backend": "file", "hicache_storage_dir": storage_dir}
    return tiers


def run(make_llm: Any, w: Workload, modes: list[str], restart: bool) -> dict[str, Any]:
    """Every mode, then (with `restart` and the disk mode) warm against cold after a restart.
    `make_llm(**settings)` starts an engine (a context manager)."""
    results: dict[str, ModeResult] = {}
    with tempfile.TemporaryDirectory(prefix="minisgl-hicache-") as tmp:
        histories: list[list[int]] = []
        for mode in modes:
            with make_llm(**mode_settings(mode, f"{tmp}/warm")) as llm:
                results[mode], histories = run_mode(llm, w, mode)
        if restart and "disk" in modes:
            for name, directory in (("restart warm", f"{tmp}/warm"), ("restart cold", f"{tmp}/cold")):
                with make_llm(**mode_settings("disk", directory)) as llm:
                    results[name] = first_after_restart(llm, w, histories[0], name)
    same = len({str(r.outputs) for name, r in results.items() if not name.startswith("restart")}) <= 1
    restarts = [r.outputs for name, r in results.items() if name.startswith("restart")]
    return {"results": [r.summary() for r in results.values()],
            "same_tokens": same and (len(restarts) < 2 or restarts[0] == restarts[1])}
