"""End to end on a GPU: `minisgl.LLM(backend="sgl")` against `LLM(backend="hf")`, greedy.

A tiny random Qwen3 and Llama (float32, real tokenizer) generate for several prompts at once;
the token ids of the two backends must be identical (near-ties aside).

    python plugins/backend-sgl/gpu/e2e_llm.py   (needs core, backend-sgl and backend-hf installed)
"""

from __future__ import annotations

import logging
import sys
import time

import torch

from minisgl import LLM, SamplingParams
from minisgl.testing import make_tiny_model

PROMPTS = ["Hello there, how are you today?", "The capital of France is", "1 2 3 4 5 6 7 8 9",
           "Once upon a time in a land far away, there lived a", "a"]


def generate(path: str, backend: str, dtype: str) -> tuple[list[list[int]], float]:
    params = SamplingParams(temperature=0.0, max_new_tokens=40, ignore_eos=True)
    with LLM(model=path, backend=backend, dtype=dtype, cuda_graph_max_bs=8) as llm:
        llm.generate(PROMPTS[:1], params)  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate(PROMPTS, params)
        return [o.token_ids for o in outs], time.perf_counter() - t0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.backends.cuda.matmul.allow_tf32 = False
    failures = 0
    for arch in ("qwen3", "llama"):
        path = make_tiny_model(f"/tmp/e2e_{arch}", arch=arch, num_layers=3, hidden_size=256, num_heads=8,
                               num_kv_heads=2, seed=5, dtype=torch.float32)
        for dtype in ("float32", "bfloat16"):
            sgl, t_sgl = generate(path, "sgl", dtype)
            try:
                hf, t_hf = generate(path, "hf", dtype)
            except Exception as exc:  # backend-hf is written in parallel; report, keep sgl's result
                print(f"E2E {arch} {dtype}: sgl generated {[len(x) for x in sgl]} tokens in {t_sgl:.2f}s; "
                      f"hf failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            same = [next((i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), len(x)) for x, y in zip(sgl, hf, strict=False)]
            total = sum(len(x) for x in sgl)
            print(f"E2E {arch} {dtype}: identical prefix per prompt {same} of {[len(x) for x in sgl]} "
                  f"({sum(same)}/{total}); sgl {t_sgl:.2f}s, hf {t_hf:.2f}s", flush=True)
            if dtype == "float32" and sum(same) < 0.9 * total:
                failures += 1
    print("E2E FAILURES:", failures, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
