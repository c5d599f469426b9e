"""`minisgl bench speculative`: one stream, greedy, with and without a proposer, on a
copy-heavy workload (reproduce or edit a given text: what n-gram lookup can draft) and a
free-writing one (nothing to copy), in one process: tokens/s of each, their ratio, the
acceptance, whether the tokens are the same, and the weight-read floor of one token."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

CODE = '''def merge_sorted(a, b):
    """Merge two sorted lists into one sorted list."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    out.extend(a[i:])
    out.extend(b[j:])
    return out
'''
TEXT = ("The river rises in the hills north of the town, runs past the old mill and the market square, "
        "and reaches the sea twelve miles to the south, where the fishing boats come in at dawn.")
WORKLOADS: dict[str, list[str]] = {
    "copy": [
        f"Repeat this code exactly:\n{CODE}",
        f"Rename the function merge_sorted to merge in this code and write it out in full:\n{CODE}",
        f"Copy this paragraph word for word, twice:\n{TEXT}",
    ],
    "free": [
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "Explain to a child why the sky is blue.",
        "Give five tips for learning to cook.",
    ],
}


@dataclass
class Run:
    workload: str
    tokens: int
    seconds: float
    drafted: int
    accepted: int
    verify_steps: int
    token_ids: list[list[int]]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def measure(llm: Any, workload: str, max_new_tokens: int, repeat: int) -> Run:
    """The median over `repeat` passes of the workload's prompts, one stream at a time."""
    from minisgl import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    prompts = WORKLOADS[workload]
    llm.chat([{"role": "user", "content": prompts[0]}], params)  # warm-up
    passes, ids = [], []
    before = llm.metrics()
    for _ in range(repeat):
        tokens, start, ids = 0, time.perf_counter(), []
        for prompt in prompts:
            out = llm.chat([{"role": "user", "content": prompt}], params)
            tokens += len(out.token_ids)
            ids.append(out.token_ids)
        passes.append((time.perf_counter() - start, tokens))
    after = llm.metrics()
    seconds, tokens = statistics.median(s for s, _ in passes), passes[0][1]  # greedy: every pass the same
    delta = {k: after[k] - before[k] for k in ("spec_draft_tokens_total", "spec_accepted_tokens_total",
                                               "spec_verify_steps_total")}
    return Run(workload, tokens, seconds, delta["spec_draft_tokens_total"], delta["spec_accepted_tokens_total"],
               delta["spec_verify_steps_total"], ids)
