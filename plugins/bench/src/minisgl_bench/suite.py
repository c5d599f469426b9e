"""`minisgl bench suite`: the original mini-sglang's bench_suite.py. Short, medium and long chat prompts
(the long case `max_new_tokens=1024`), each run BENCH_CONCURRENCY at a time, BENCH_REPEAT
times after BENCH_WARMUP warm-up rounds, through minisgl's streaming engine and through
the Hugging Face streaming baseline (generate + TextIteratorStreamer, BENCH_HF_CONCURRENCY
threads) on the same model, dtype and device. With BENCH_MIXED_PROMPTS=1 half the prompts
get a random suffix, so not every prompt is a prefix-cache hit. Both sides produce every
request's full `max_new_tokens` (EOS ignored), so they do the same work.

It ends with the original's three lines:
    Streaming chat summary: throughput=<tok/s> tok/s, duration=<seconds>s
    Baseline HF streaming chat summary: throughput=<tok/s> tok/s, duration=<seconds>s
    Comparison: streaming faster by <seconds>s with x<ratio> throughput
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from .offline import Result, Workload

# (case, max_new_tokens, prompts): one prompt per concurrent request, cycled
CASES: dict[str, tuple[int, tuple[str, ...]]] = {
    "short": (64, ("Hi! Who are you?", "Name three colors.", "What is 2 + 2?", "Say hello in French.")),
    "medium": (256, (
        "Explain how a hash map works and when to use one.",
        "Describe the water cycle for a ten-year-old.",
        "What are the pros and cons of electric cars?",
        "Give me a recipe for a simple tomato pasta.",
    )),
    "long": (1024, (
        "Write a detailed essay on the history of computing, from the abacus to modern GPUs.",
        "Write a long story about a lighthouse keeper who discovers a hidden map.",
        "Explain, step by step and with examples, how the internet routes a packet across the world.",
        "Write a thorough guide to planning a two-week trip through Japan.",
    )),
}
SUFFIX_WORDS = ("please", "briefly", "carefully", "today", "again", "clearly", "now", "in detail")


@dataclass
class SuiteRun:
    system: str
    seconds: float = 0.0
    tokens: int = 0

    @property
    def throughput(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def add(self, result: Result) -> None:
        self.seconds += result.seconds
        self.tokens += result.output_tokens


def case_prompts(case: str, concurrency: int, mixed: bool, rng: random.Random) -> list[str]:
    _, prompts = CASES[case]
    out = [prompts[i % len(prompts)] for i in range(concurrency)]
    if mixed:  # half of them: a random suffix, so they differ from every earlier prompt
        out = [p + " " + " ".join(rng.choices(SUFFIX_WORDS, k=3)) if i % 2 else p for i, p in enumerate(out)]
    return out


def chat_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                          return_dict=False) for p in prompts]


def minisgl_streaming(llm: Any, wl: Workload) -> Result:
    """Every prompt streamed through minisgl's engine at once (it batches them)."""
    from minisgl.sampling_params import SamplingParams

    params = [SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True) for n in wl.output_lens]
    t0 = time.perf_counter()
    tokens = sum(len(d.token_ids) for d in llm.stream(wl.prompts, params))
    return Result("minisgl streaming", time.perf_counter() - t0, tokens)


def summary_lines(mini: SuiteRun, hf: SuiteRun) -> list[str]:
    faster = hf.seconds - mini.seconds
    ratio = mini.throughput / hf.throughput if hf.throughput else float("inf")
    return [
        f"Streaming chat summary: throughput={mini.throughput:.2f} tok/s, duration={mini.seconds:.3f}s",
        f"Baseline HF streaming chat summary: throughput={hf.throughput:.2f} tok/s, duration={hf.seconds:.3f}s",
        f"Comparison: streaming {'faster' if faster >= 0 else 'slower'} by {abs(faster):.3f}s with x{ratio:.2f} throughput",
    ]
