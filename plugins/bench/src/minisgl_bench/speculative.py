"""`minisgl bench speculative`: one stream, greedy, with and without a proposer, on a
copy-heavy workload (reproduce or edit a given text: what n-gram lookup can draft) and a
free-writing one (nothing to copy), both engines in one process with their passes
alternating: tokens/s of each, their ratio, the acceptance, whether the tokens are the
same, and the weight-read floor of one token."""

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


def measure(llms: dict[str, Any], workload: str, max_new_tokens: int, repeat: int) -> dict[str, Run]:
    """Each system's median over `repeat` passes of the workload's prompts, one stream at a
    time; the systems' passes alternate, so a change in the host's speed meets them alike."""
    from minisgl import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    prompts = WORKLOADS[workload]
    passes: dict[str, list[float]] = {name: [] for name in llms}
    ids: dict[str, list[list[int]]] = {}
    before = {}
    for name, llm in llms.items():
        llm.chat([{"role": "user", "content": prompts[0]}], params)  # warm-up
        before[name] = llm.metrics()
    for _ in range(repeat):
        for name, llm in llms.items():
            start, ids[name] = time.perf_counter(), []
            for prompt in prompts:
                ids[name].append(llm.chat([{"role": "user", "content": prompt}], params).token_ids)
            passes[name].append(time.perf_counter() - start)
    runs = {}
    for name, llm in llms.items():
        after = llm.metrics()
        delta = {k: after[k] - before[name][k] for k in ("spec_draft_tokens_total", "spec_accepted_tokens_total",
                                                         "spec_verify_steps_total")}
        tokens = sum(map(len, ids[name]))  # greedy: every pass the same
        runs[name] = Run(workload, tokens, statistics.median(passes[name]), delta["spec_draft_tokens_total"],
                         delta["spec_accepted_tokens_total"], delta["spec_verify_steps_total"], ids[name])
    return runs
