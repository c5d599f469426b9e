"""Where a constrained decode step's time goes on backend-sgl: `minisgl bench grammar`'s
batch, free and under its JSON schema, with the GPU's busy share of each step and the host's
waits that could leave it idle.

Per run (free, json_schema; `minisgl bench grammar` gives the unprofiled steps), median over
the full-batch steps:
- step: wall time of `engine.step()`;
- GPU: CUDA kernel time per step under torch.profiler (its wall is slower; the share counts);
- mask wait: the engine thread blocked on the step's bitmask in the sampler;
- feed / fill: the mask worker consuming the last step's tokens, then filling the rows.
A json_schema step longer than a free one while the GPU is less busy is host time the
overlap does not hide. Then, unprofiled, the timeline of a median step: when each thread
reaches each point (ms from the start of `engine.step()`), and the GPU's share (CUDA events
around the graph replay and the sampler): the idle gap before the sampler is the mask the
GPU waits for.

    python plugins/backend-sgl/gpu/profile_grammar.py [preset] [batch] [key=value settings...]
Writes profile_grammar_<preset>.txt and a Chrome trace of a few constrained steps under $OUT.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from profile_w1 import settings_from_argv
from torch.profiler import ProfilerActivity, profile

from minisgl import LLM
from minisgl.engine import sampler
from minisgl.engine.grammar_masks import GrammarMasks
from minisgl_bench import grammar_step


class Timers:
    """Seconds spent in the wrapped calls, reset per run."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls.setdefault(name, []).append(time.perf_counter() - t0)
        return timed

    def per_step_ms(self, name: str, steps: int) -> float:
        return 1e3 * sum(self.calls.get(name, [])) / max(steps, 1)


class Timeline:
    """(point, seconds) stamps of the engine's steps, host side, and CUDA events around each
    step's graph replay and sampling, without the profiler's overhead."""

    def __init__(self, llm) -> None:
        import threading

        self.stamps: list[tuple[str, float]] = []
        self.gpu: list[tuple[str, torch.cuda.Event]] = []
        self.on = False
        engine, runner = llm.engine, llm.engine.runner
        worker = threading.current_thread

        def stamp(name: str) -> None:
            if self.on:
                where = "engine" if worker() is threading.main_thread() else "worker"
                self.stamps.append((f"{where}: {name}", time.perf_counter()))

        def event(name: str) -> None:
            if self.on:
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                self.gpu.append((name, e))

        def timed(fn, before: str, after: str, gpu: bool = False):
            def wrapped(*args, **kwargs):
                stamp(before)
                if gpu:
                    event(before)
                try:
                    return fn(*args, **kwargs)
                finally:
                    stamp(after)
                    if gpu:
                        event(after)
            return wrapped

        def around(obj, attr: str, before: str, after: str, gpu: bool = False) -> None:
            setattr(obj, attr, timed(getattr(obj, attr), before, after, gpu))

        step = engine.step

        def timed_step():
            stamp("step")
            return step()
        engine.step = timed_step
        around(runner, "forward", "forward launch", "forward returned")
        around(runner.graphs, "run", "graph start", "graph end", gpu=True)
        around(engine.scheduler, "process", "process start", "process end")
        around(engine.scheduler.rows, "batch", "sampling rows start", "sampling rows end")
        around(engine.scheduler.masks, "mask", "mask submit start", "mask submit end")
        around(engine.scheduler.masks, "feed", "feed start", "feed end")
        around(engine.grammar_queue.backend, "fill", "fill start", "fill end")
        runner.kernels = dataclasses.replace(
            runner.kernels,
            bitmask_logits=timed(runner.kernels.bitmask_logits, "bitmask launch", "bitmask launched"),
            gumbel_argmax=timed(runner.kernels.gumbel_argmax, "draw launch", "draw launched"))
        sample = runner._sample

        def timed_sample(logits, sampling):
            if sampling.vocab_mask is not None:
                stamp("mask wait")
                sampling.vocab_mask.result()
                stamp("mask ready")
            event("sampler start")
            try:
                return sample(logits, sampling)
            finally:
                stamp("sampler launched")
                event("sampler end")
        runner._sample = timed_sample

    def report(self, say) -> None:
        torch.cuda.synchronize()
        starts = [i for i, (name, _) in enumerate(self.stamps) if name == "engine: step"]
        offsets: dict[str, list[float]] = {}
        for a, b in zip(starts, starts[1:]):
            t0 = self.stamps[a][1]
            seen: set[str] = set()
            for name, t in self.stamps[a + 1:b]:
                if name not in seen:
                    seen.add(name)
                    offsets.setdefault(name, []).append(1e3 * (t - t0))
            offsets.setdefault("(next step)", []).append(1e3 * (self.stamps[b][1] - t0))
        for name, values in sorted(offsets.items(), key=lambda kv: statistics.median(kv[1])):
            say(f"    {name:28s} {statistics.median(values):6.2f} ms  (in {len(values)} steps)")
        phases: dict[str, list[float]] = {}
        for (n0, e0), (n1, e1) in zip(self.gpu, self.gpu[1:]):
            label = {("graph start", "graph end"): "GPU graph replay", ("graph end", "sampler start"): "GPU idle before the sampler",
                     ("sampler start", "sampler end"): "GPU sampler", ("sampler end", "graph start"): "GPU between steps"}.get((n0, n1))
            if label:
                phases.setdefault(label, []).append(e0.elapsed_time(e1))
        for label, values in phases.items():
            say(f"    {label:28s} {statistics.median(values):6.2f} ms  (median of {len(values)})")
        self.stamps.clear()
        self.gpu.clear()


def main() -> None:
    preset = sys.argv[1] if len(sys.argv) > 1 else "qwen3-0.6b"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    extra = settings_from_argv(sys.argv[3:])
    out = Path(os.environ.get("OUT", "/tmp"))
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    device_activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU  # CPU: a dry run of the script
    timers = Timers()
    sampler.vocab_mask_words = timers.wrap("mask wait", sampler.vocab_mask_words)
    GrammarMasks.feed = timers.wrap("feed", GrammarMasks.feed)
    settings = {"backend": "sgl", "max_running_requests": batch, "grammar_backend": "llguidance", **extra}
    say(f"grammar steps on {preset}, batch {batch}, settings {settings}")
    with LLM(model=preset, dtype="bfloat16", **settings) as llm:
        prompts = grammar_step._prompts(llm, batch, 0)
        grammar_step.run_steps(llm, prompts[:2], 4, True, grammar_step.StepTimes("warm-up"))
        for constrained_run in (False, True):  # the kernels of every batch size, compiled before the profile
            grammar_step.run_steps(llm, prompts, 8, constrained_run, grammar_step.StepTimes("warm-up"))
            llm.flush_cache()
        for constrained_run in (False, True):
            timers.calls.clear()
            times = grammar_step.StepTimes("json_schema" if constrained_run else "free")
            sync()
            with profile(activities=[device_activity]) as prof:
                t0 = time.perf_counter()
                grammar_step.run_steps(llm, prompts, 64, constrained_run, times)
                sync()
                wall = time.perf_counter() - t0
            llm.flush_cache()
            steps = len(times.step_ms) + 1
            gpu = sum(e.self_device_time_total for e in prof.key_averages() if e.device_time_total > 0) / 1e3
            say(f"{times.kind:12s} profiled step {times.median_step:.2f} ms (wall {1e3 * wall / steps:.2f} ms/step), "
                f"GPU kernels {gpu / steps:.2f} ms/step ({100 * gpu / 1e3 / wall:.0f}% busy), "
                f"mask wait {timers.per_step_ms('mask wait', steps):.2f} ms, feed {timers.per_step_ms('feed', steps):.2f} ms, "
                f"fill {statistics.median(times.fill_ms) if times.fill_ms else 0:.2f} ms")
            if constrained_run:
                say(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=50))
        if cuda:
            timeline = Timeline(llm)
            for constrained_run in (False, True):
                times = grammar_step.StepTimes("json_schema" if constrained_run else "free")
                timeline.on = True
                grammar_step.run_steps(llm, prompts, 64, constrained_run, times)
                timeline.on = False
                llm.flush_cache()
                say(f"{times.kind} timeline, median step {times.median_step:.2f} ms:")
                timeline.report(say)
        # a few constrained steps with the host's side, to read in chrome://tracing or Perfetto
        times = grammar_step.StepTimes("trace")
        with profile(activities=list({ProfilerActivity.CPU, device_activity})) as prof:
            grammar_step.run_steps(llm, prompts, 8, True, times)
        prof.export_chrome_trace(str(out / f"trace_grammar_{preset}.json.gz"))
    (out / f"profile_grammar_{preset}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
