"""Overlap scheduling on a GPU, end to end: `LLM(backend="sgl")` with overlap on must give the
same tokens as with overlap off, and (fp32) as `LLM(backend="hf")`, on random-weight Qwen3 and
Llama checkpoints written with save_pretrained.

Covered: mixed prefill + decode batches under queueing (--max-running-requests below the
number of prompts), batches above --cuda-graph-max-bs (eager) and below (graphs), stop token
ids, seeded sampling and repetition penalties (on vs off), retraction under a tight KV pool,
aborts in the middle of a run, and the pool invariant after every phase.

    python plugins/backend-sgl/gpu/overlap_e2e.py   (needs core, backend-sgl and backend-hf installed)
"""

from __future__ import annotations

import logging
import random
import sys
import time

import torch

from minisgl import LLM, SamplingParams
from minisgl.engine.messages import EngineRequest
from minisgl.testing import make_tiny_model
from minisgl_backend_sgl.runner import SglModelRunner

MAX_NEW = [5, 40, 17, 1, 33, 2, 40, 9, 25, 40, 3, 12, 40, 7, 31, 40]
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("OK   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def prompts_for(vocab: int, n: int = len(MAX_NEW), seed: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(rng.randint(3, 90))] for _ in range(n)]


def make_llm(path: str, backend: str, dtype: str, overlap: bool, **kw) -> LLM:
    SglModelRunner.supports_overlap = overlap  # read once, when the engine is built
    try:
        llm = LLM(model=path, backend=backend, dtype=dtype, cuda_graph_max_bs=8, **kw)
    finally:
        SglModelRunner.supports_overlap = True
    if backend == "sgl" and llm.engine.overlap != overlap:
        raise AssertionError(f"engine.overlap is {llm.engine.overlap}, wanted {overlap}")
    return llm


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True, **kw)


def abort_run(llm: LLM, prompts: list[list[int]]) -> dict[str, tuple[list[int], str | None]]:
    """Drive the engine by hand; abort every third request after a few steps."""
    eng = llm.engine
    for i, p in enumerate(prompts):
        eng.add_request(EngineRequest(rid=f"a{i}", input_ids=p, sampling=greedy(40)))
    got: dict[str, list[int]] = {f"a{i}": [] for i in range(len(prompts))}
    reasons: dict[str, str | None] = {}
    steps = 0
    while eng.has_work():
        for out in eng.step():
            got[out.rid].extend(out.new_token_ids)
            if out.finished:
                reasons[out.rid] = out.finish_reason
        steps += 1
        if steps == 6:
            for i in range(0, len(prompts), 3):
                eng.abort_request(f"a{i}")
        if steps > 10_000:
            raise AssertionError("engine did not drain")
    eng.check_invariants()
    return {rid: (ids, reasons.get(rid)) for rid, ids in got.items()}


def suite(path: str, backend: str, dtype: str, overlap: bool, vocab: int) -> dict:
    prompts = prompts_for(vocab)
    res: dict = {}
    with make_llm(path, backend, dtype, overlap, max_running_requests=6) as llm:
        t0 = time.perf_counter()
        res["greedy"] = [o.token_ids for o in llm.generate(prompts, [greedy(n) for n in MAX_NEW])]
        res["t"] = time.perf_counter() - t0
        llm.engine.check_invariants()
        # stop at the token each prompt produced 4th in the greedy run (shorter runs: no stop id)
        stops = [g[3] if len(g) > 4 else None for g in res["greedy"]]
        outs = llm.generate(prompts, [greedy(40, stop_token_ids=[s] if s is not None else []) for s in stops])
        res["stop"] = [(o.token_ids, o.finish_reason) for o in outs]
        res["stops"] = stops
        llm.engine.check_invariants()
        sampled = [SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=i, max_new_tokens=n, ignore_eos=True)
                   for i, n in enumerate(MAX_NEW)]
        res["seeded"] = [o.token_ids for o in llm.generate(prompts, sampled)]
        pen = [greedy(n, repetition_penalty=1.3) for n in MAX_NEW]
        res["penalty"] = [o.token_ids for o in llm.generate(prompts, pen)]
        llm.engine.check_invariants()
        res["abort"] = abort_run(llm, prompts)
        llm.flush_cache()
        llm.engine.check_invariants()
        res["kv_used_after_flush"] = llm.engine.metrics()["kv_used_tokens"]
    # a pool far smaller than the work: requests are retracted and readmitted
    with make_llm(path, backend, dtype, overlap, max_running_requests=16, num_pages=400) as llm:
        res["tight"] = [o.token_ids for o in llm.generate(prompts, [greedy(n) for n in MAX_NEW])]
        llm.engine.check_invariants()
        res["tight_metrics"] = {k: v for k, v in llm.engine.metrics().items() if "retract" in k or k == "steps_total"}
    return res


def same_prefix(a: list[list[int]], b: list[list[int]]) -> tuple[int, int]:
    n = sum(next((i for i, (x, y) in enumerate(zip(p, q)) if x != y), min(len(p), len(q))) for p, q in zip(a, b))
    return n, sum(len(p) for p in a)


def compare(arch: str, dtype: str, on: dict, off: dict, hf: dict | None) -> None:
    tag = f"{arch} {dtype}"
    exact = dtype == "float32"
    for key in ("greedy", "seeded", "penalty", "tight"):
        n, total = same_prefix(on[key], off[key])
        check(n == total or not exact, f"{tag} {key}: overlap on == off on {n}/{total} tokens")
    check(all(len(g) == m for g, m in zip(on["greedy"], MAX_NEW)), f"{tag} greedy lengths == max_new_tokens {MAX_NEW}")
    check(on["stop"] == off["stop"] or not exact, f"{tag} stop tokens: on == off: {on['stop'] == off['stop']} {[(len(t), r) for t, r in on['stop']]}")
    for (toks, reason), full, s in zip(on["stop"], on["greedy"], on["stops"]):
        if s is not None:
            cut = full.index(s)
            ok = reason == "stop" and toks in (full[:cut], full[: cut + 1])
        else:  # no stop id: 40 tokens that start with the shorter greedy run
            ok = reason == "length" and len(toks) == 40 and toks[: len(full)] == full
        if not ok:
            check(False, f"{tag} stop token {s}: got {len(toks)} tokens ({reason}), greedy run {full[:8]}...")
            break
    else:
        check(True, f"{tag} stop tokens end each request at the first occurrence")
    ab_on, ab_off = on["abort"], off["abort"]
    aborted = sorted(r for r, (_, why) in ab_on.items() if why == "abort")
    check(aborted == sorted(r for r, (_, why) in ab_off.items() if why == "abort") and len(aborted) > 0,
          f"{tag} aborts: {aborted} aborted with overlap on and off")
    finished = [r for r, (_, why) in ab_on.items() if why != "abort"]
    same = sum(ab_on[r] == ab_off[r] for r in finished)
    check(all(ab_on[r][1] == "length" for r in finished) and (same == len(finished) or not exact),
          f"{tag} aborts: the {len(finished)} others finish with 'length', {same} identically on and off")
    def agrees(x: list[int], y: list[int]) -> bool:
        m = min(len(x), len(y))
        return x[:m] == y[:m]

    agree = sum(agrees(ab_on[f"a{i}"][0], on["greedy"][i]) for i in range(len(MAX_NEW)))
    check(agree == len(MAX_NEW) or not exact, f"{tag} aborts: {agree}/{len(MAX_NEW)} streams agree with the plain greedy run")
    check(on["kv_used_after_flush"] == 0 and off["kv_used_after_flush"] == 0,
          f"{tag} kv used after flush: on {on['kv_used_after_flush']}, off {off['kv_used_after_flush']}")
    print(f"     {tag} tight pool: on {on['tight_metrics']}, off {off['tight_metrics']}", flush=True)
    if hf is not None:
        for key in ("greedy", "tight", "penalty"):
            n, total = same_prefix(on[key], hf[key])
            check(n == total, f"{tag} {key}: sgl overlap == hf on {n}/{total} tokens")
        check(on["stop"] == hf["stop"], f"{tag} stop tokens: sgl overlap == hf")
    print(f"     {tag} generate() time: overlap on {on['t']:.2f}s, off {off['t']:.2f}s" + (f", hf {hf['t']:.2f}s" if hf else ""), flush=True)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.backends.cuda.matmul.allow_tf32 = False
    for arch in ("qwen3", "llama"):
        path = make_tiny_model(f"/tmp/ov_{arch}", arch=arch, num_layers=3, hidden_size=256, num_heads=8,
                               num_kv_heads=2, seed=7, dtype=torch.float32)
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(path).vocab_size
        for dtype in ("float32", "bfloat16"):
            on = suite(path, "sgl", dtype, True, vocab)
            off = suite(path, "sgl", dtype, False, vocab)
            hf = None
            if dtype == "float32":
                try:
                    hf = suite(path, "hf", dtype, False, vocab)
                except Exception as exc:  # report, keep the on/off comparison
                    check(False, f"{arch} hf suite failed: {type(exc).__name__}: {exc}")
            compare(arch, dtype, on, off, hf)
    print(f"OVERLAP E2E FAILURES: {len(failures)}", flush=True)
    for f in failures:
        print("  ", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
