"""Micro-benchmark of the backend-hf runner's forward, next to plain transformers.

    python plugins/backend-hf/bench_runner.py                 # smollm2-135m, checkpoint dtype
    python plugins/backend-hf/bench_runner.py --dtype float32 --batch-sizes 1,32

Decode steps at several batch sizes with ~200-token contexts (each request on its own run of
slots, or with --scatter on random slots, the worst case for the gathers), then prefills: one long prompt, and many short ones in one
batch. The same shapes through transformers' own forward (SDPA attention, DynamicCache)
show what the paged path costs or saves. Times are the median of --iters runs.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch

from minisgl.engine.batch import ForwardBatch, SamplingBatch
from minisgl.settings import Settings


def greedy(rows: int) -> SamplingBatch:
    def fill(value: float, dtype: torch.dtype) -> torch.Tensor:
        return torch.full((rows,), value, dtype=dtype)

    f32, i64 = torch.float32, torch.long
    return SamplingBatch(
        fill(0, f32),
        fill(1, f32),
        fill(0, i64),
        fill(0, f32),
        fill(1, f32),
        fill(0, f32),
        fill(0, f32),
        fill(-1, i64),
        fill(0, i64),
    )


def timed(fn: Callable[[], object], iters: int, warmup: int = 2) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def decode_batch(
    batch_size: int, context: int, capacity: int, vocab: int, gen: torch.Generator, scatter: bool = False
) -> ForwardBatch:
    """B requests, each with `context - 1` tokens already in the pool + 1 new token."""
    lens = [
        context + int(torch.randint(-context // 4, context // 4 + 1, (1,), generator=gen)) for _ in range(batch_size)
    ]
    width = max(lens)
    if scatter:  # every token on a random slot: the worst case for the gathers
        slots = torch.randperm(capacity, generator=gen)[: batch_size * width].view(batch_size, width)
    else:  # each request on its own run of slots, as a fresh pool hands them out
        blocks = torch.randperm(capacity // width, generator=gen)[:batch_size]
        slots = blocks[:, None] * width + torch.arange(width)[None, :]
    for row, length in enumerate(lens):
        slots[row, length:] = 0
    return ForwardBatch(
        input_ids=torch.randint(0, vocab, (batch_size,), generator=gen),
        positions=torch.tensor([n - 1 for n in lens]),
        out_slots=torch.tensor([slots[row, n - 1] for row, n in enumerate(lens)]),
        page_table=slots,
        extend_lens=[1] * batch_size,
        prefix_lens=[n - 1 for n in lens],
        sample_indices=torch.arange(batch_size),
        sampling=greedy(batch_size),
    )


def prefill_batch(lengths: list[int], vocab: int, gen: torch.Generator) -> ForwardBatch:
    total, width = sum(lengths), max(lengths)
    table = torch.zeros(len(lengths), width, dtype=torch.long)
    out_slots, positions, start = [], [], 0
    for row, n in enumerate(lengths):
        table[row, :n] = torch.arange(start, start + n)
        out_slots.append(table[row, :n])
        positions.append(torch.arange(n))
        start += n
    ends = torch.tensor(lengths).cumsum(0) - 1
    return ForwardBatch(
        input_ids=torch.randint(0, vocab, (total,), generator=gen),
        positions=torch.cat(positions),
        out_slots=torch.cat(out_slots),
        page_table=table,
        extend_lens=list(lengths),
        prefix_lens=[0] * len(lengths),
        sample_indices=ends,
        sampling=greedy(len(lengths)),
    )


def hf_decode_seconds(model: torch.nn.Module, batch_size: int, context: int, vocab: int, iters: int) -> float:
    """transformers with its DynamicCache: B equal-length rows, one new token each."""
    from transformers import DynamicCache

    ids = torch.randint(0, vocab, (batch_size, context - 1))
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    step = torch.randint(0, vocab, (batch_size, 1))

    def one() -> None:
        model(input_ids=step, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)  # drop the new token: the context length stays fixed across iterations

    return timed(one, iters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="smollm2-135m", help="model name for minisgl.models.resolve_model, or a local dir"
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--context", type=int, default=200, help="decode context length (rows vary by +-25%%)")
    parser.add_argument("--prefill", type=int, default=2000, help="tokens of the long-prompt prefill")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no-hf", action="store_true", help="skip the plain transformers comparison")
    parser.add_argument("--transformers-modules", action="store_true",
                        help="run the runner through transformers' modules instead of the lean CPU decoder")
    parser.add_argument("--forwards", action="store_true",
                        help="only decode steps, each through transformers' modules, the lean decoder on oneDNN, "
                             "and the lean decoder with its few-row kernel, interleaved; best of --iters each")
    parser.add_argument("--scatter", action="store_true", help="decode contexts on random slots (worst case)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--verify-rows", default=None, metavar="N,N,...",
                        help="only speculative verify steps: one request running its last token and N - 1 drafts "
                             "at --context, each N against one row, interleaved; median of --iters")
    parser.add_argument("--profile", type=int, default=None, metavar="B",
                        help="then profile decode steps at batch B: the top ops by their own time, and the "
                             "wall time no op accounts for (Python and dispatch)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from transformers import AutoModelForCausalLM

    from minisgl.models import resolve_model
    from minisgl_backend_hf.runner import create_runner

    resolved = resolve_model(args.model)
    settings = Settings(dtype=args.dtype, num_pages=32 * 1024)
    runner = create_runner(settings, SimpleNamespace(path=resolved.path, dummy=resolved.dummy, name=resolved.name))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.transformers_modules:
        runner.decoder = None
    vocab, capacity = runner.vocab_size, runner.kv_capacity()
    gen = torch.Generator().manual_seed(0)
    forward = "lean CPU decoder" if runner.decoder is not None else "transformers' modules"
    print(f"model {resolved.name}  dtype {runner.dtype}  threads {torch.get_num_threads()}  device {runner.device}  "
          f"forward {forward}")

    if args.verify_rows:
        verify_rows(runner, [int(n) for n in args.verify_rows.split(",")], args.context, gen, args.iters)
        return
    if args.forwards:
        compare_forwards(runner, [int(b) for b in args.batch_sizes.split(",")], args.context, gen, args.iters,
                         args.scatter)
        return

    hf = None
    if not args.no_hf:
        hf = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=runner.dtype, attn_implementation="sdpa").eval()

    print(f"{'shape':<28}{'minisgl ms':>12}{'tok/s':>10}{'hf ms':>10}{'tok/s':>10}")

    def row(label: str, tokens: int, ours: float, theirs: float | None) -> None:
        hf_cols = f"{theirs * 1e3:>10.1f}{tokens / theirs:>10.0f}" if theirs else ""
        print(f"{label:<28}{ours * 1e3:>12.1f}{tokens / ours:>10.0f}{hf_cols}", flush=True)

    with torch.inference_mode():
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            batch = decode_batch(bs, args.context, capacity, vocab, gen, args.scatter)
            ours = timed(lambda b=batch: runner.forward(b), args.iters)
            theirs = hf_decode_seconds(hf, bs, args.context, vocab, args.iters) if hf else None
            row(f"decode B={bs} ctx~{args.context}", bs, ours, theirs)

        for lengths in ([args.prefill], [250] * 8):
            batch = prefill_batch(lengths, vocab, gen)
            ours = timed(lambda b=batch: runner.forward(b), max(2, args.iters // 4), warmup=1)
            theirs = None
            if hf and len(set(lengths)) == 1:
                ids = torch.randint(0, vocab, (len(lengths), lengths[0]))
                theirs = timed(
                    lambda ids=ids: hf(input_ids=ids, use_cache=False, logits_to_keep=1),
                    max(2, args.iters // 4),
                    warmup=1,
                )
            row(f"prefill {len(lengths)}x{lengths[0]}", sum(lengths), ours, theirs)

        if args.profile:
            profile_decode(runner, decode_batch(args.profile, args.context, capacity, vocab, gen, args.scatter),
                           args.iters)


@torch.inference_mode()
def compare_forwards(runner, batch_sizes: list[int], context: int, gen: torch.Generator, iters: int,
                     scatter: bool) -> None:
    """The runner's three CPU forwards on the same decode batches, one after the other per
    iteration, so a busy moment costs them alike."""
    lean = runner.decoder
    if lean is None:
        raise SystemExit("no lean CPU decoder for this model or machine (see the runner's Forward: log line)")
    few_rows = lean.gemv_rows
    forwards = {"transformers modules": (None, 0), "lean, oneDNN": (lean, 0), "lean, few-row kernel": (lean, few_rows)}
    print(f"{'decode ms (best of ' + str(iters) + ')':<28}" + "".join(f"{name:>22}" for name in forwards))
    try:
        for bs in batch_sizes:
            batch = decode_batch(bs, context, runner.kv_capacity(), runner.vocab_size, gen, scatter)
            best = dict.fromkeys(forwards, float("inf"))
            for _ in range(iters + 1):  # the first round warms up
                for name, (decoder, rows) in forwards.items():
                    runner.decoder, lean.gemv_rows = decoder, rows
                    start = time.perf_counter()
                    runner.forward(batch)
                    best[name] = min(best[name], time.perf_counter() - start)
            kernel = "" if bs <= few_rows else "  (rows above the kernel's: oneDNN)"
            print(f"{f'B={bs} ctx~{context}':<28}" + "".join(f"{best[n] * 1e3:>22.1f}" for n in forwards) + kernel)
    finally:
        runner.decoder, lean.gemv_rows = lean, few_rows


@torch.inference_mode()
def verify_rows(runner, rows: list[int], context: int, gen: torch.Generator, iters: int) -> None:
    """What a verify row costs: one request extending by n tokens (every position sampled)
    for each n, interleaved, so a busy moment costs them alike."""
    def batch(n: int) -> ForwardBatch:
        table = torch.arange(context + n)[None, :]
        return ForwardBatch(input_ids=torch.randint(0, runner.vocab_size, (n,), generator=gen),
                            positions=torch.arange(context, context + n), out_slots=table[0, context:].clone(),
                            page_table=table, extend_lens=[n], prefix_lens=[context], sample_indices=torch.arange(n),
                            sampling=greedy(n))

    batches = {n: batch(n) for n in sorted({1, *rows})}
    samples: dict[int, list[float]] = {n: [] for n in batches}
    for b in batches.values():  # warm-up
        runner.forward(b)
    for _ in range(iters):
        for n, b in batches.items():
            start = time.perf_counter()
            runner.forward(b)
            samples[n].append(time.perf_counter() - start)
    one = statistics.median(samples[1])
    for n in batches:
        ms = statistics.median(samples[n]) * 1e3
        print(f"verify of {n:2d} rows at ctx {context}: {ms:6.2f} ms  {ms / one / 1e3:.2f}x one row")


def profile_decode(runner, batch: ForwardBatch, iters: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    runner.forward(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(iters):
            runner.forward(batch)
        wall = (time.perf_counter() - t0) / iters * 1e3
    events = prof.key_averages()
    # leaf ops' own time: what the kernels took; the rest of the wall is Python and dispatch
    kernels = sum(e.self_cpu_time_total for e in events) / iters / 1e3
    print(f"\ndecode B={batch.input_ids.shape[0]}: {wall:.1f} ms a step, of which ops' own time {kernels:.1f} ms "
          f"(the profiler's overhead included)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=14))


if __name__ == "__main__":
    main()
