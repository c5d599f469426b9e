"""Speculative decoding with the n-gram proposer: the same tokens as plain decoding (greedy,
and seeded sampling draw for draw), a target distribution that naive acceptance breaks,
KV accounting after rejected drafts, and what a request can ask for beside it. Greedy
equality runs on the real smollm2-135m: a verify forward and a decode step add in another
order, which flips the near-ties of random weights."""

import random
from collections import Counter

import pytest
from engine_helpers import make_engine, run_all, tokens

from minisgl import LLM, SamplingParams
from minisgl.engine import speculative
from minisgl.engine.messages import EngineRequest
from minisgl.engine.request import Req
from minisgl.engine.speculative import NgramProposer
from minisgl.plugins import SelectionError
from minisgl.settings import Settings, SettingsError, load_settings

SPEC = dict(speculative_algorithm="ngram", speculative_num_draft_tokens=4)

pytestmark = pytest.mark.usefixtures("always_draft")
# a prompt that repeats itself: the proposer finds what followed each suffix before, and a
# real model goes on repeating it
LOOP = [1011, 1012, 1013, 1014, 1015, 1016, 1017, 1018] * 6


def proposer(lo: int = 1, hi: int = 12) -> NgramProposer:
    return NgramProposer(Settings(speculative_ngram_min_match_window_size=lo,
                                  speculative_ngram_max_match_window_size=hi))


def test_ngram_drafts_what_followed_the_latest_longest_match():
    p = proposer()
    assert p.propose("r", [1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], 2) == [7, 1]  # the latest of two equal matches
    assert p.propose("r", [5, 1, 2, 8, 2, 9, 1, 2], 3) == [8, 2, 9]  # "1 2" beats the later "2"
    assert p.propose("r", [1, 2, 3], 4) == []  # nothing earlier ends like it
    assert proposer(lo=3).propose("r", [4, 1, 2, 9, 1, 2], 2) == []  # shorter than the min window
    assert p.propose("r", [1, 2, 1, 2], 0) == []
    assert p.propose("r", [4, 7, 7, 7], 5) == [7, 7, 7, 7, 7]  # a loop goes on: its period repeats
    assert p.propose("r", [9, 1, 2, 3, 1, 2, 3], 5) == [1, 2, 3, 1, 2]


def run(engine, prompts, params):
    for i, ids in enumerate(prompts):
        engine.add_request(EngineRequest(rid=f"r{i}", input_ids=ids, sampling=params))
    outs = run_all(engine)
    return [tokens(outs[f"r{i}"]) for i in range(len(prompts))], outs


def test_greedy_tokens_equal_plain_decoding_and_drafts_are_accepted(smollm2_path):
    prompts = [LOOP, LOOP[3:] + [2040, 2041], [3030, 3031, 3032, 3033] * 5]
    params = SamplingParams(temperature=0.0, max_new_tokens=40, ignore_eos=True)
    plain, _ = run(make_engine(smollm2_path), prompts, params)
    engine = make_engine(smollm2_path, **SPEC)
    drafted, _ = run(engine, prompts, params)
    assert drafted == plain
    m = engine.metrics()
    assert m["spec_draft_tokens_total"] > 0 and m["spec_accepted_tokens_total"] > 0
    assert m["spec_mean_accepted_length"] > 1.0
    assert m["generation_tokens_total"] == 3 * 40  # max_new_tokens never exceeded


def test_bf16_greedy_tokens_equal_plain_decoding_where_every_row_takes_the_decode_kernels(smollm2_path):
    """In bfloat16 a verify's rows take the kernels a decode step takes (the few-row
    projection kernel computes each row alike; short extends attend as decode rows), so the
    logits are the same bits and greedy output is plain decoding's."""
    import torch

    from minisgl.dtypes import cpu_has_native_bf16
    from minisgl_backend_hf.cpu_kernels import decoder_ops

    ops = decoder_ops(torch.bfloat16)
    if not cpu_has_native_bf16() or ops is None or not ops.gemv_rows:
        pytest.skip("needs AVX512-BF16 (the few-row bf16 kernel)")
    from transformers import AutoTokenizer

    texts = ["Rewrite this sentence in the passive voice: The cat chased the mouse around the house, and the "
             "mouse ran under the bed.", "List the days of the week, then list them again in reverse order.",
             "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
             "# Rewrite the function above iteratively:\n", "Write a short story about a robot who learns to paint."]
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    params = SamplingParams(temperature=0.0, max_new_tokens=64)
    plain, _ = run(make_engine(smollm2_path, dtype="bfloat16"), prompts, params)
    engine = make_engine(smollm2_path, dtype="bfloat16", **SPEC)
    drafted, _ = run(engine, prompts, params)
    assert drafted == plain
    assert engine.metrics()["spec_accepted_tokens_total"] > 0


def test_seeded_sampling_draws_the_same_tokens_and_naive_acceptance_does_not(tiny_llama_path, monkeypatch):
    """Each output index draws the same noise with or without drafts, so seeded requests give
    the same tokens; accepting every draft (naive) gives other ones: the target is lost."""
    params = [SamplingParams(temperature=1.0, max_new_tokens=8, ignore_eos=True, seed=s) for s in range(12)]
    # every token once: whatever is sampled occurred before, so every decode step drafts
    every = random.Random(3).sample(range(992), 992)  # the tiny model's vocabulary

    def sample(engine):
        for i, p in enumerate(params):
            engine.add_request(EngineRequest(rid=f"s{i}", input_ids=every, sampling=p))
        outs = run_all(engine)
        return [tokens(outs[f"s{i}"]) for i in range(len(params))]

    plain = sample(make_engine(tiny_llama_path, max_running_requests=4))
    drafted_engine = make_engine(tiny_llama_path, max_running_requests=4, **SPEC)
    assert sample(drafted_engine) == plain
    assert drafted_engine.metrics()["spec_draft_tokens_total"] > 0

    monkeypatch.setattr(speculative.Speculation, "verify",  # naive: keep every draft, then one sample
                        lambda self, req, sampled: [*req.draft, sampled[len(req.draft)]])
    naive = sample(make_engine(tiny_llama_path, max_running_requests=4, **SPEC))
    assert sum(a != b for a, b in zip(naive, plain)) >= len(plain) // 2


def test_rejected_drafts_leave_the_pool_consistent_under_retraction(smollm2_path):
    """A pool too small for every request at once: retractions, readmissions from the cache
    and truncated drafts, with the pool checked after every step (run_all)."""
    prompts = [LOOP[i:] + [2050 + i] for i in range(6)]
    params = SamplingParams(temperature=0.0, max_new_tokens=30, ignore_eos=True)
    plain, _ = run(make_engine(smollm2_path, num_pages=160), prompts, params)
    engine = make_engine(smollm2_path, num_pages=160, **SPEC)
    drafted, _ = run(engine, prompts, params)
    assert drafted == plain
    assert engine.metrics()["retractions_total"] > 0


def test_stops_logprobs_and_grammars_beside_drafts(smollm2_path):
    engine = make_engine(smollm2_path, **SPEC)
    plain = make_engine(smollm2_path)
    # a stop token that greedy decoding reaches inside a drafted run ends the request there
    free, _ = run(plain, [LOOP], SamplingParams(temperature=0.0, max_new_tokens=20, ignore_eos=True))
    stop = free[0][9]
    params = SamplingParams(temperature=0.0, max_new_tokens=20, stop_token_ids=[stop], logprobs=True, top_logprobs=2)
    got, outs = run(engine, [LOOP], params)
    want, _ = run(plain, [LOOP], params)
    assert got == want and got[0][-1] == stop and len(got[0]) == free[0].index(stop) + 1
    assert outs["r0"][-1].finish_reason == "stop"
    # one logprob and one top-logprob list for every emitted token
    assert sum(len(o.logprobs or []) for o in outs["r0"]) == len(got[0])
    assert sum(len(o.top_logprobs or []) for o in outs["r0"]) == len(got[0])
    # a constrained request gets what it gets without speculation (test_speculative_grammar.py)
    regex = SamplingParams(temperature=0.0, max_new_tokens=12, regex="(ab|cd)+")
    assert run(engine, [LOOP], regex)[0] == run(plain, [LOOP], regex)[0]


def test_llm_streams_several_tokens_a_step_with_n_samples(smollm2_path):
    params = SamplingParams(temperature=0.0, max_new_tokens=32, ignore_eos=True, n=2)
    with LLM(smollm2_path, dtype="float32", backend="hf") as llm:
        want = [o.token_ids for o in llm.generate(LOOP, params)[0].outputs]
    with LLM(smollm2_path, dtype="float32", backend="hf", **SPEC) as llm:
        got = [o.token_ids for o in llm.generate(LOOP, params)[0].outputs]
        deltas = list(llm.stream(LOOP, SamplingParams(temperature=0.0, max_new_tokens=32, ignore_eos=True)))
        assert llm.metrics()["spec_accepted_tokens_total"] > 0
    assert got == want
    streamed = [t for d in deltas for t in d.token_ids]
    assert streamed == want[0] and any(len(d.token_ids) > 1 for d in deltas)


def test_settings_are_checked_at_start(tiny_llama_path):
    with pytest.raises(SelectionError, match="--speculative-algorithm"):
        make_engine(tiny_llama_path, speculative_algorithm="eagle")
    with pytest.raises(SettingsError, match="speculative_ngram_min_match_window_size"):
        load_settings(flags={"speculative_ngram_min_match_window_size": 5,
                             "speculative_ngram_max_match_window_size": 3}, environ={})
    with pytest.raises(SettingsError, match="speculative_draft_model_path"):
        load_settings(flags={"speculative_draft_model_path": "/models/draft"}, environ={})


class Sevens(speculative.Proposer):
    def propose(self, req_id, token_ids, max_tokens):
        return [7] * max_tokens


def sevens_speculation() -> tuple[speculative.Speculation, Req]:
    """k = 4 over a proposer that always drafts 7s, and one request."""
    req = Req(rid="a", prompt_ids=[1, 2, 3], params=SamplingParams(max_new_tokens=100), max_new_tokens=100,
              stop_ids=frozenset())
    return speculative.Speculation(Sevens(), 4, 1000, Counter()), req


def test_the_gate_drafts_only_while_drafted_steps_pay():
    spec, req = sevens_speculation()
    spec.draft([req])
    assert req.draft == []  # a plain step first: its time is what drafts must beat
    spec.observe(0.010, drafted=False)
    spec.draft([req])
    assert req.draft == [7, 7, 7, 7]
    for _ in range(speculative.JUDGE_AFTER):  # every draft accepted: 5 tokens for a step twice as long
        spec.verify(req, [7, 7, 7, 7, 9])
        spec.observe(0.020, drafted=True)
    spec.draft([req])
    assert req.draft == [7, 7, 7, 7]
    for _ in range(20):  # now none accepted: a step twice as long for one token
        spec.verify(req, [1, 1, 1, 1, 1])
        spec.observe(0.020, drafted=True)
        if spec.off_steps:
            break
    assert spec.off_steps == speculative.OFF_STEPS and spec.next_off == 2 * speculative.OFF_STEPS  # longer next time
    spec.draft([req])
    assert req.draft == []  # paused for every request


def test_a_request_drafts_as_many_tokens_as_its_acceptance_and_the_verify_rows_cost_pay_for():
    """Untimed, every request drafts k. Once a drafted step of 4 rows is known to cost 10%
    more than a plain one, a request whose drafts keep failing drafts fewer, then pauses, and
    one whose drafts are accepted drafts k again; dearer rows mean shorter drafts."""
    spec, req = sevens_speculation()
    spec.observe(0.010, drafted=False)
    spec.draft([req])
    assert req.draft == [7, 7, 7, 7]
    spec.observe(0.011, drafted=True)
    assert spec.draft_length(0.5) == 4 and spec.draft_length(0.3) == 2 and spec.draft_length(0.02) == 0
    lengths = []
    for _ in range(20):  # every draft rejected
        spec.draft([req])
        if not req.draft:
            break
        lengths.append(len(req.draft))
        spec.verify(req, [1] * (len(req.draft) + 1))
    assert lengths[0] == 4 and lengths[-1] == 1 and lengths == sorted(lengths, reverse=True)
    assert req.spec_pause == speculative.PAUSE_STEPS
    for _ in range(speculative.PAUSE_STEPS):
        spec.draft([req])
        assert req.draft == []
    spec.drafted_s = 0.040  # a drafted step timed at a busy moment: no draft would pay at the starting estimate
    assert spec.draft_length(0.5) == 0
    spec.draft([req])
    assert req.draft == [7]  # yet the pause ends with a probe, whose step is timed afresh
    spec.verify(req, [7, 7])
    spec.drafted_s = 0.011
    for _ in range(3):  # and drafts accepted
        spec.draft([req])
        spec.verify(req, [7] * (len(req.draft) + 1))
    spec.draft([req])
    assert req.draft == [7, 7, 7, 7]
    spec.observe(0.030, drafted=True)  # rows now dear: a middling request drafts fewer
    assert spec.draft_length(0.5) < 4


def test_a_proposer_plugin_must_subclass_proposer():
    from types import SimpleNamespace

    class Duck:  # has the methods, not the base class
        def propose(self, req_id, token_ids, max_tokens):
            return []

    class Registry:
        def get(self, kind, name):
            assert (kind, name) == ("proposer", "duck")
            return SimpleNamespace(name="duck", description="a test proposer", load=lambda: lambda settings: Duck())

    settings = Settings(speculative_algorithm="duck")
    with pytest.raises(SelectionError, match="Duck, which does not subclass minisgl.engine.speculative.Proposer"):
        speculative.load_proposer(settings, Registry())
