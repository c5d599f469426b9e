"""Offline throughput on a GPU: minisgl (backend sgl) with overlap scheduling on and off,
against transformers' continuous batching and the original mini-sglang's streaming baseline, on one seeded
workload, in one process. Uses `minisgl bench`'s own pieces (plugins/bench/src/minisgl_bench/).

The model is Qwen3-0.6B-shaped with random bf16 weights written by save_pretrained (the
`qwen3-0.6b` preset is config + tokenizer only; the transformers peers need weights on disk).

    python plugins/backend-sgl/gpu/bench_overlap.py --num-requests 256 --input-len 100-1000 --output-len 100-500
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict

import torch

from minisgl.cli import bench
from minisgl.models import resolve_model
from minisgl_bench import hf_peers, offline


def random_checkpoint(preset: str, out: str) -> str:
    """The preset's config and tokenizer plus random bf16 weights, saved with save_pretrained."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    src = resolve_model(preset).path
    shutil.copytree(src, out, dirs_exist_ok=True)
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen3-0.6b")
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--input-len", default="100-1000")
    ap.add_argument("--output-len", default="100-500")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--streaming-requests", type=int, default=32, help="hf-streaming runs the workload's first N (0 = skip)")
    ap.add_argument("--streaming-concurrency", type=int, default=16)
    ap.add_argument("--skip-hf-cb", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="timed minisgl runs per overlap setting, alternating")
    ap.add_argument("--output", default=os.path.join(os.environ.get("OUT", "/tmp"), "bench_overlap.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    path = random_checkpoint(args.preset, f"/tmp/bench_{args.preset}")
    from transformers import AutoConfig, AutoTokenizer

    vocab = AutoConfig.from_pretrained(path).get_text_config().vocab_size
    specials = max(AutoTokenizer.from_pretrained(path).all_special_ids or [0]) + 1
    wl = offline.make_workload(args.num_requests, bench._range(args.input_len, "--input-len"),
                             bench._range(args.output_len, "--output-len"), args.seed, vocab, specials)
    dtype = offline.checkpoint_dtype(path)
    print(f"workload: {args.num_requests} requests, {sum(map(len, wl.prompts))} input tokens, "
          f"{wl.output_tokens} output tokens, dtype {dtype}, {torch.cuda.get_device_name()}", flush=True)
    data: dict = {"device": torch.cuda.get_device_name(), "dtype": dtype, "preset": args.preset,
                  "workload": vars(args) | {"input_tokens": sum(map(len, wl.prompts)), "output_tokens": wl.output_tokens},
                  "results": []}

    def record(r: offline.Result, extra: dict | None = None) -> None:
        data["results"].append(asdict(r) | {"tokens_per_s": r.tokens_per_s} | (extra or {}))
        print(f"{r.system}: {r.tokens_per_s:.1f} tok/s ({r.seconds:.2f} s, {r.output_tokens} tokens)", flush=True)
        with open(args.output, "w") as fh:
            json.dump(data, fh, indent=2)

    floor_s, how = offline.compute_floor(path, dtype, wl)
    data["compute_floor"] = {"seconds": floor_s, "tokens_per_s": wl.output_tokens / floor_s, "how": how}
    with open(args.output, "w") as fh:
        json.dump(data, fh, indent=2)
    print(f"compute floor: {wl.output_tokens / floor_s:.0f} tok/s ({floor_s:.2f} s): {how}", flush=True)

    # one engine, overlap toggled between runs (the engine reads `overlap` every step and has
    # nothing in flight between generate() calls): same pool, graphs and compiled kernels
    from minisgl import LLM, SamplingParams

    params = [SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True) for n in wl.output_lens]
    with LLM(model=path, backend="sgl", dtype=dtype) as llm:
        t0 = time.perf_counter()
        llm.generate(wl.prompts, params)  # warm-up: Triton compiles every shape class once
        print(f"warm-up pass (untimed, includes Triton compilation): {time.perf_counter() - t0:.1f} s", flush=True)
        for i in range(args.repeats):
            for overlap in (True, False):
                llm.flush_cache()  # no prefix reuse between runs
                llm.engine.overlap = overlap
                steps0 = llm.engine.metrics()["steps_total"]
                t0 = time.perf_counter()
                outs = llm.generate(wl.prompts, params)
                r = offline.Result(f"minisgl-sgl overlap {'on' if overlap else 'off'} (run {i + 1})",
                                 time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in outs))
                record(r, {"overlap": overlap, "steps": llm.engine.metrics()["steps_total"] - steps0})
        llm.engine.overlap = True
    torch.cuda.empty_cache()

    if not args.skip_hf_cb:
        try:
            record(hf_peers.run_hf_cb(path, dtype, wl))
        except Exception as exc:
            print(f"hf-cb failed: {type(exc).__name__}: {exc}", flush=True)
        torch.cuda.empty_cache()
    if args.streaming_requests:
        sub = offline.Workload(wl.prompts[: args.streaming_requests], wl.output_lens[: args.streaming_requests])
        try:
            r = hf_peers.run_hf_streaming(path, dtype, sub, args.streaming_concurrency)
            r.system += f" (first {args.streaming_requests} requests)"
            record(r)
        except Exception as exc:
            print(f"hf-streaming failed: {type(exc).__name__}: {exc}", flush=True)

    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"bench_overlap done in {time.perf_counter() - t0:.0f} s", flush=True)
    sys.exit(rc)
