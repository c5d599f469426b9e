"""Where W1's wall time goes on backend-sgl: GPU kernel time against wall time, and the host.

Runs W1 (minisgl_bench.offline.make_w1) through `LLM` on a preset with random weights three
times after a warm-up: plain (tok/s), under torch.profiler (CUDA kernel time summed, the top
kernels, and the GPU's idle share of the wall), and under cProfile (the engine's host work:
the calling thread drives the engine, so its functions are what a step waits on).

    python plugins/backend-sgl/gpu/profile_w1.py [preset] [key=value settings...]
Writes profile_<preset>.txt under $OUT (or /tmp).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from minisgl import LLM, SamplingParams
from minisgl.models import resolve_model
from minisgl_bench.offline import make_w1


def settings_from_argv(args: list[str]) -> dict:
    out = {}
    for arg in args:
        key, value = arg.split("=", 1)
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def main() -> None:
    preset = sys.argv[1] if len(sys.argv) > 1 else "qwen3-0.6b"
    extra = settings_from_argv(sys.argv[2:])
    path = resolve_model(preset).path
    from transformers import AutoConfig, AutoTokenizer

    vocab = AutoConfig.from_pretrained(path).get_text_config().vocab_size
    specials = max(AutoTokenizer.from_pretrained(path).all_special_ids or [0]) + 1
    wl = make_w1(vocab, specials)
    params = [SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True) for n in wl.output_lens]
    report = io.StringIO()

    def say(line: str) -> None:
        print(line, flush=True)
        report.write(line + "\n")

    settings = {"backend": "sgl", "max_running_requests": 256, **extra}
    say(f"W1 on {preset}, settings {settings}")
    with LLM(model=preset, dtype="bfloat16", **settings) as llm:
        llm.generate([wl.prompts[0][:16]], SamplingParams(max_new_tokens=4, temperature=0.0))

        def run() -> float:
            llm.flush_cache()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs = llm.generate(wl.prompts, params)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            assert sum(len(o.outputs[0].token_ids) for o in outs) == wl.output_tokens
            return seconds

        plain = run()
        say(f"plain: {plain:.2f} s, {wl.output_tokens / plain:.0f} tok/s")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            profiled = run()
        kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
        gpu_s = sum(e.self_device_time_total for e in kernels) / 1e6
        say(f"under torch.profiler: {profiled:.2f} s wall, GPU kernels {gpu_s:.2f} s "
            f"({100 * gpu_s / profiled:.0f}% busy)")
        say(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60))
        cprof = cProfile.Profile()
        cprof.enable()
        host = run()
        cprof.disable()
        say(f"under cProfile: {host:.2f} s")
        text = io.StringIO()
        pstats.Stats(cprof, stream=text).sort_stats("tottime").print_stats(35)
        say(text.getvalue())
        text = io.StringIO()
        pstats.Stats(cprof, stream=text).sort_stats("cumulative").print_stats(45)
        say(text.getvalue())
    out = Path(os.environ.get("OUT", "/tmp")) / f"profile_{preset}.txt"
    out.write_text(report.getvalue())


if __name__ == "__main__":
    main()
