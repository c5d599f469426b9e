"""Overlap scheduling on the CPU: the real backend-hf runner behind a runner whose results
resolve lazily (lazy_runner.py), so step N+1 is launched before step N's tokens are read.
Outputs must equal the synchronous engine's, with the pool invariant after every step."""

import re

import pytest
from engine_helpers import GREEDY, make_engine, prompts, run_all, tokens
from lazy_runner import make_overlap_engine

from minisgl import SamplingParams
from minisgl.engine.messages import EngineRequest


def run(eng, requests):
    for rid, ids, params in requests:
        eng.add_request(EngineRequest(rid=rid, input_ids=ids, sampling=params))
    outs = run_all(eng)
    eng.check_invariants()
    assert eng.metrics()["kv_used_tokens"] == 0
    return outs


@pytest.fixture
def engines(tiny_llama_path):
    made = []

    def build(**knobs):
        pair = make_engine(tiny_llama_path, **knobs), make_overlap_engine(tiny_llama_path, **knobs)
        made.extend(pair)
        return pair

    yield build
    for eng in made:
        eng.shutdown()


@pytest.mark.parametrize(
    "knobs",
    [
        dict(page_size=4, max_prefill_length=7),  # chunked prefill, pages
        dict(num_pages=24, page_size=4, max_running_requests=4, max_prefill_length=16),  # retraction
    ],
    ids=["chunked", "retraction"],
)
def test_overlap_greedy_equals_synchronous(engines, knobs):
    sync, lazy = engines(**knobs)
    assert not sync.overlap and lazy.overlap
    ps = prompts(sync.runner.vocab_size, (5, 17, 30, 9, 40, 12, 3, 25))
    ps.append(ps[2][:20] + [7, 8, 9])
    reqs = [(f"r{i}", p, SamplingParams(max_new_tokens=12, **GREEDY)) for i, p in enumerate(ps)]
    want, got = run(sync, reqs), run(lazy, reqs)
    for i in range(len(ps)):
        assert tokens(got[f"r{i}"]) == tokens(want[f"r{i}"]), f"request {i}"
        assert [o.finish_reason for o in got[f"r{i}"] if o.finished] == ["length"]
    assert lazy.runner.overlapped_launches > 10
    if "num_pages" in knobs:
        assert lazy.metrics()["retractions_total"] > 0


def test_overlap_stop_tokens_seeds_penalties_logprobs(engines):
    sync, lazy = engines(page_size=2)
    ps = prompts(sync.runner.vocab_size, (8, 13, 6, 11))
    (ref,) = [tokens(o) for o in run(sync, [("g", ps[0], SamplingParams(max_new_tokens=8, **GREEDY))]).values()]
    stop_at = ref[2]
    assert ref.index(stop_at) == 2, "the tiny model repeated itself: pick another prompt"
    reqs = [
        # stops after 3 tokens: the next step already ran a wasted row for it
        ("stop", ps[0], SamplingParams(max_new_tokens=8, stop_token_ids=[stop_at], **GREEDY)),
        ("min", ps[0], SamplingParams(max_new_tokens=8, min_new_tokens=5, stop_token_ids=[stop_at], **GREEDY)),
        ("seeded", ps[1], SamplingParams(max_new_tokens=10, temperature=1.0, seed=11, ignore_eos=True)),
        ("logprobs", ps[3], SamplingParams(max_new_tokens=6, logprobs=True, top_logprobs=2, **GREEDY)),
    ]
    launches = lazy.runner.overlapped_launches
    want, got = run(sync, reqs), run(lazy, reqs)
    assert lazy.runner.overlapped_launches - launches >= 8
    # penalties read the previous token on the host: those steps run synchronously
    penalised = [("penalty", ps[2], SamplingParams(max_new_tokens=6, repetition_penalty=1.5, frequency_penalty=0.5, **GREEDY))]
    want.update(run(sync, penalised))
    got.update(run(lazy, penalised))
    for rid, *_ in reqs + penalised:
        assert tokens(got[rid]) == tokens(want[rid]), rid
        assert got[rid][-1].finish_reason == want[rid][-1].finish_reason, rid
        assert sum(o.finished for o in got[rid]) == 1
    assert tokens(got["stop"]) == ref[:3] and got["stop"][-1].finish_reason == "stop"
    assert len(tokens(got["min"])) >= 5
    lp = [x for o in got["logprobs"] for x in o.logprobs]
    assert lp == pytest.approx([x for o in want["logprobs"] for x in o.logprobs], abs=1e-5)


def test_overlap_aborts_free_everything(engines):
    _, lazy = engines(page_size=4, max_prefill_length=8)
    ps = prompts(lazy.runner.vocab_size, (10, 30, 6))
    for i, p in enumerate(ps):
        lazy.add_request(EngineRequest(rid=f"r{i}", input_ids=p, sampling=SamplingParams(max_new_tokens=40, **GREEDY)))
    seen: dict[str, list] = {}
    for _ in range(3):  # r0 decodes, r1 is mid-prefill (chunks of 8)
        for o in lazy.step():
            seen.setdefault(o.rid, []).append(o)
        lazy.check_invariants()
    lazy.abort_request("r0")
    lazy.abort_request("r1")
    for o in lazy.step():
        seen.setdefault(o.rid, []).append(o)
    lazy.check_invariants()
    assert seen["r0"][-1].finish_reason == "abort" and seen["r1"][-1].finish_reason == "abort"
    rest = run_all(lazy)
    assert "r0" not in rest and "r1" not in rest  # the wasted rows emit nothing
    assert len(tokens(seen.get("r2", []) + rest["r2"])) == 40
    assert not lazy.has_work() and lazy.metrics()["kv_used_tokens"] == 0
    assert lazy.metrics()["requests_aborted_total"] == 2


def test_grammars_hold_through_overlap_and_retraction(engines, tiny_llama_path):
    from transformers import AutoTokenizer

    sync, lazy = engines(num_pages=24, page_size=4, max_running_requests=4, max_prefill_length=16)
    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    ps = prompts(sync.runner.vocab_size, (9, 14, 6, 11, 8))
    pattern = "(ab|ba){12}c"  # longer than a few pages: the pool retracts some of the five
    reqs = [(f"g{i}", p, SamplingParams(max_new_tokens=40, temperature=1.0, seed=i, regex=pattern))
            for i, p in enumerate(ps)]
    want, got = run(sync, reqs), run(lazy, reqs)
    for rid, *_ in reqs:
        assert tokens(got[rid]) == tokens(want[rid]), rid
        text = tok.decode(tokens(got[rid]), skip_special_tokens=True)
        assert re.fullmatch(pattern, text) and got[rid][-1].finish_reason == "stop", (rid, text)
    assert lazy.metrics()["retractions_total"] > 0
    assert lazy.runner.deferred_samples > 0 and lazy.runner.overlapped_launches > 0
