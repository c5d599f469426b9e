"""`minisgl bench grammar`: what structured outputs cost a decode step.

`batch` requests decode `tokens` tokens each (sampled with seeds, EOS ignored) in one
process, alternately free and under a JSON schema that cannot complete within them (an array
of at least 8 objects of three fields), so both decode the same full-batch steps. Reported: the
median step time of each, the mask's cost as a share of a free step (the median of the rounds'
own; the goal is under 10%), and the grammar backend's fill time per step (on a GPU it runs on
a worker thread while the forward runs, so it costs the step only where it is longer).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

SCHEMA = {
    "type": "array",
    "minItems": 8,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    },
}


@dataclass
class StepTimes:
    kind: str  # "free" | "json_schema"
    step_ms: list[float] = field(default_factory=list)  # steps that ran every request
    fill_ms: list[float] = field(default_factory=list)

    @property
    def median_step(self) -> float:
        return statistics.median(self.step_ms) if self.step_ms else 0.0

    @property
    def median_fill(self) -> float:
        return statistics.median(self.fill_ms) if self.fill_ms else 0.0


def _prompts(llm: Any, batch: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    words = "the a of and to in is it that was for on are with as be at by this have from".split()
    return [llm.frontend.tokenizer.encode(" ".join(rng.choice(words) for _ in range(24))) for _ in range(batch)]


def run_steps(llm: Any, prompts: list[list[int]], tokens: int, constrained: bool, into: StepTimes) -> None:
    """One batch through the engine step by step, timing the steps where all of it decodes."""
    from minisgl.sampling_params import SamplingParams

    engine = llm.engine
    schema = json.dumps(SCHEMA) if constrained else None
    for i, ids in enumerate(prompts):
        params = SamplingParams(max_new_tokens=tokens, temperature=1.0, seed=i, ignore_eos=True, json_schema=schema)
        for req in llm.frontend.generation(f"grammar-{into.kind}-{time.monotonic_ns()}-{i}", [ids], params).engine_requests():
            engine.add_request(req)
    backend = engine.grammar_queue.backend
    fill = backend.fill

    def timed_fill(rows: Any, bitmask: Any) -> None:
        t0 = time.perf_counter()
        fill(rows, bitmask)
        into.fill_ms.append((time.perf_counter() - t0) * 1e3)

    backend.fill = timed_fill
    try:
        left = len(prompts)
        while left:
            full = len(engine.scheduler.running) == len(prompts) and not engine.scheduler.waiting
            t0 = time.perf_counter()
            outs = engine.step()
            if full and engine.scheduler.running:
                into.step_ms.append((time.perf_counter() - t0) * 1e3)
            left -= sum(1 for o in outs if o.finished)
    finally:
        backend.fill = fill


def measure(llm: Any, batch: int, tokens: int, rounds: int, seed: int) -> tuple[StepTimes, StepTimes, list[float]]:
    """Free and constrained steps, and each round's cost: its constrained median step over its
    free one, minus one (a round runs both within a minute, so the machine's drift over the
    whole run, 10-30% on a shared CPU, cancels inside it)."""
    prompts = _prompts(llm, batch, seed)
    free, constrained = StepTimes("free"), StepTimes("json_schema")
    run_steps(llm, prompts[:2], 4, True, StepTimes("warm-up"))  # the backend's tokenizer, the schema's grammar
    costs = []
    for _ in range(rounds):
        f, c = len(free.step_ms), len(constrained.step_ms)
        run_steps(llm, prompts, tokens, False, free)
        llm.flush_cache()
        run_steps(llm, prompts, tokens, True, constrained)
        llm.flush_cache()
        costs.append(statistics.median(constrained.step_ms[c:]) / statistics.median(free.step_ms[f:]) - 1)
    return free, constrained, costs
