"""The hierarchical cache on a GPU: loading a prefix's KV pages back from pinned host memory
against recomputing them (one prompt's prefill), per prefix length, random bf16 weights.

    PYTHONPATH=core/src:plugins/backend-sgl/src:plugins/backend-sgl/tests:plugins/backend-sgl/gpu \\
        python plugins/backend-sgl/gpu/bench_hicache_load.py
"""

from __future__ import annotations

import json
import os
import sys

import torch
from batches import greedy_sampling
from bench_decode import time_steps, write_config

from minisgl.engine.batch import ForwardBatch
from minisgl.settings import Settings
from minisgl_backend_sgl.runner import SglModelRunner

LENGTHS = [int(n) for n in os.environ.get("BENCH_LENGTHS", "512,2048,8192").split(",")]
PRESETS = os.environ.get("BENCH_PRESETS", "llama-3.1-8b").split(",")


def prefill(n: int) -> ForwardBatch:
    table = torch.arange(n, device="cuda")[None, :]
    return ForwardBatch(
        input_ids=torch.randint(0, 1000, (n,), device="cuda"), positions=torch.arange(n, device="cuda"),
        out_slots=table[0].contiguous(), page_table=table, extend_lens=[n], prefix_lens=[0],
        sample_indices=torch.tensor([n - 1], device="cuda"), sampling=greedy_sampling(1, "cuda"), seq_lens=[n],
    )


def main() -> int:
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    rows = []
    for name in PRESETS:
        path = write_config(name)
        runner = SglModelRunner(Settings(num_pages=max(LENGTHS) + 64, max_running_requests=8, dummy_weight=True),
                                path, dummy=True, graph_batch_sizes_override=[1])
        for n in LENGTHS:
            batch = prefill(n)
            recompute = time_steps(lambda batch=batch, runner=runner: runner.forward(batch).resolve(), steps=5)
            slots = list(range(n))
            pages = runner.read_kv(slots).to("cpu").pin_memory()

            def load(pages: torch.Tensor = pages, slots: list[int] = slots, runner: SglModelRunner = runner) -> None:
                runner.write_kv(slots, pages.to("cuda", non_blocking=True))
                torch.cuda.synchronize()

            loaded = time_steps(load, steps=5)
            row = dict(model=name, tokens=n, recompute_ms=recompute * 1e3, load_ms=loaded * 1e3,
                       kv_mb=pages.numel() * pages.element_size() / 1e6, load_over_recompute=loaded / recompute)
            print(json.dumps(row), flush=True)
            rows.append(row)
        runner.shutdown()
        torch.cuda.empty_cache()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "bench_hicache_load.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
