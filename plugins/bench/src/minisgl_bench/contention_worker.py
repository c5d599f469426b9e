"""One engine for `minisgl bench contention`, in a process of its own: it loads the model
once, then answers each `measure` line on stdin with the decode step's time as one JSON line
(`STEP {...}`), so the parent can change what runs beside it between measurements. With
`--load` it decodes forever instead: the busy engine a neighbour is made of.

Runs in minisgl's environment (`--engine minisgl`) or in vLLM's (`--engine vllm`), so it
imports nothing of minisgl at module level. A decode step is timed as the difference of two
runs of the same batch that differ only in their output length, over the extra tokens: the
prefill (cached after the first run on both engines) and the start-up of a run cancel out."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def _minisgl(model: str, dtype: str, options: dict[str, Any]) -> Callable[[list[list[int]], int], int]:
    from minisgl import LLM, SamplingParams

    llm = LLM(model, dtype=dtype, **options)

    def run(prompts: list[list[int]], tokens: int) -> int:
        outs = llm.generate(prompts, SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True))
        return sum(len(o.token_ids) for o in outs)

    return run


def _vllm(model: str, dtype: str, options: dict[str, Any]) -> Callable[[list[list[int]], int], int]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model, dtype=dtype, max_model_len=2048, seed=0, **options)

    def run(prompts: list[list[int]], tokens: int) -> int:
        params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=["minisgl", "vllm"], required=True)
    ap.add_argument("--model", required=True, help="minisgl: a model name; vllm: a local directory")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, required=True)
    ap.add_argument("--short", type=int, required=True, help="output tokens of the short run")
    ap.add_argument("--long", type=int, required=True, help="output tokens of the long run")
    ap.add_argument("--reps", type=int, default=2, help="short/long pairs per measurement (median)")
    ap.add_argument("--options", default="{}", help="JSON: keyword arguments for the engine's LLM")
    ap.add_argument("--load", action="store_true", help="decode forever (a busy neighbour)")
    args = ap.parse_args()

    run = (_minisgl if args.engine == "minisgl" else _vllm)(args.model, args.dtype, json.loads(args.options))
    # distinct prompts of ordinary token ids, so no request shares another's prefix
    prompts = [[100 + (r * 7919 + i * 31) % 20000 for i in range(args.prompt_len)] for r in range(args.batch)]
    run(prompts, args.short)  # warm-up: first-call costs, and the prompts' prefill cached
    if args.load:
        print("READY", flush=True)
        while True:
            run(prompts, args.long)
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() != "measure":
            break
        steps = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            run(prompts, args.short)
            t1 = time.perf_counter()
            run(prompts, args.long)
            t2 = time.perf_counter()
            steps.append(((t2 - t1) - (t1 - t0)) / (args.long - args.short) * 1000)
        print("STEP " + json.dumps({"step_ms": statistics.median(steps), "steps_ms": steps}), flush=True)


if __name__ == "__main__":
    main()
