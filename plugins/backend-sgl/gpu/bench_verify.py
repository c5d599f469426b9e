"""Speculative decoding on backend-sgl, batch 1, random bf16 weights of the presets' shapes.

1. The cost of one verify step (the last token and k drafts, every position sampled) against
   one plain decode step (CUDA graph), per k, at a 512-token context: `runner.forward` waited on.
2. One stream end to end through `minisgl.LLM`, greedy, without drafts and with
   `--speculative-algorithm ngram` at each k in BENCH_STREAM_KS: ms per token, the
   acceptance seen, the same tokens or not. Two prompts: a 512-token random one (random
   weights fall into a loop under greedy decoding, which n-gram lookup finds once it has
   come round once), and "looping": that prompt followed by its own first 512 output tokens,
   so the loop is in the context from the start (the acceptance a copy-heavy workload gives).

    PYTHONPATH=core/src:plugins/backend-sgl/src:plugins/bench/src:plugins/backend-sgl/tests \
        python plugins/backend-sgl/gpu/bench_verify.py
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from batches import greedy_sampling
from bench_decode import time_steps, write_config

from minisgl import LLM, SamplingParams
from minisgl.engine.batch import ForwardBatch
from minisgl.settings import Settings
from minisgl_backend_sgl.runner import SglModelRunner

CONTEXT = 512
KS = [int(k) for k in os.environ.get("BENCH_KS", "1,2,4,8").split(",")]
PRESETS = os.environ.get("BENCH_PRESETS", "qwen3-0.6b,llama-3.1-8b").split(",")
NEW_TOKENS = int(os.environ.get("BENCH_NEW_TOKENS", "256"))
STREAM_KS = [int(k) for k in os.environ.get("BENCH_STREAM_KS", "4,8").split(",")]
STREAM_PRESETS = os.environ.get("BENCH_STREAM_PRESETS", PRESETS[0]).split(",")


def step_batch(n: int) -> ForwardBatch:
    """One request holding CONTEXT - 1 tokens that runs `n` more (a decode when n is 1)."""
    table = torch.arange(CONTEXT + n, device="cuda")[None, :]
    start = CONTEXT - 1
    return ForwardBatch(
        input_ids=torch.randint(0, 1000, (n,), device="cuda"),
        positions=torch.arange(start, start + n, device="cuda"), out_slots=table[0, start:start + n].contiguous(),
        page_table=table, extend_lens=[n], prefix_lens=[start], sample_indices=torch.arange(n, device="cuda"),
        sampling=greedy_sampling(n, "cuda"), seq_lens=[start + n],
    )


def verify_cost(name: str, path: str) -> list[dict]:
    runner = SglModelRunner(Settings(num_pages=4096, max_running_requests=8, dummy_weight=True), path, dummy=True,
                            graph_batch_sizes_override=[1, 2, 4, 8, 16])
    runner.kv.k.uniform_(-1, 1)
    runner.kv.v.uniform_(-1, 1)
    plain = time_steps(lambda: runner.forward(step_batch(1)).resolve())
    rows = [dict(model=name, k=0, ms=plain * 1e3, ratio=1.0)]
    for k in KS:
        batch = step_batch(k + 1)
        sec = time_steps(lambda batch=batch: runner.forward(batch).resolve())
        rows.append(dict(model=name, k=k, ms=sec * 1e3, ratio=sec / plain))
    runner.shutdown()
    torch.cuda.empty_cache()
    return rows


def one_stream(name: str) -> list[dict]:
    prompt = torch.randint(100, 20000, (CONTEXT,), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    with LLM(model=name, backend="sgl", dtype="bfloat16", dummy_weight=True, num_pages=8192) as llm:
        head = llm.generate(prompt, SamplingParams(temperature=0.0, max_new_tokens=CONTEXT, ignore_eos=True))[0]
    prompts = {"random": prompt, "looping": prompt + head.token_ids}
    rows, outputs = [], {}
    for k in [0] + STREAM_KS:
        extra = {"speculative_algorithm": "ngram", "speculative_num_draft_tokens": k} if k else {}
        with LLM(model=name, backend="sgl", dtype="bfloat16", dummy_weight=True, num_pages=8192, **extra) as llm:
            for workload, ids in prompts.items():
                llm.generate(ids, params)  # warm-up: graphs, kernels, and the engine's step timings
                before = llm.metrics()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = llm.generate(ids, params)[0]
                sec = time.perf_counter() - t0
                after = llm.metrics()
                drafted = after["spec_draft_tokens_total"] - before["spec_draft_tokens_total"]
                kept = after["spec_accepted_tokens_total"] - before["spec_accepted_tokens_total"]
                steps = after["spec_verify_steps_total"] - before["spec_verify_steps_total"]
                outputs[workload, k] = out.token_ids
                rows.append(dict(model=name, workload=workload, k=k, ms_per_token=sec * 1e3 / len(out.token_ids),
                                 acceptance=kept / drafted if drafted else None, verify_steps=steps, drafted=drafted,
                                 accepted=kept, same_tokens=outputs[workload, k] == outputs[workload, 0]))
    return rows


def main() -> int:
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    results = []
    for name in PRESETS:
        path = write_config(name)
        for row in verify_cost(name, path) + (one_stream(name) if name in STREAM_PRESETS else []):
            print(json.dumps(row), flush=True)
            results.append(row)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "bench_verify.json"), "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
