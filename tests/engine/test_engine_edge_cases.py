"""Aborts mid-prefill and mid-decode with the radix cache, prompts beyond the context,
page size 2, and retracted requests readmitted from the prefix cache."""

import pytest
import torch
from engine_helpers import GREEDY, prompts, reference, run_all, tokens
from transformers import AutoModelForCausalLM

from minisgl import SamplingParams
from minisgl.engine.messages import EngineRequest


@pytest.fixture(scope="module")
def hf_model(tiny_llama_path):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()


def test_abort_mid_chunked_prefill_keeps_the_computed_chunks(engine_factory, tiny_llama_path, hf_model):
    eng = engine_factory(tiny_llama_path, page_size=4, max_prefill_length=8)
    (p,) = prompts(eng.runner.vocab_size, (30,))
    eng.add_request(EngineRequest(rid="a", input_ids=p, sampling=SamplingParams(max_new_tokens=5, **GREEDY)))
    for _ in range(2):  # two chunks of 8: 16 of 30 prompt tokens in the pool
        assert eng.step() == []
        eng.check_invariants()
    eng.abort_request("a")
    (out,) = eng.step()
    assert out.finish_reason == "abort" and out.completion_tokens == 0
    eng.check_invariants()
    m = eng.metrics()
    assert m["kv_used_tokens"] == 0 and m["kv_cached_tokens"] == 16 and not eng.has_work()
    # the same prompt again starts from the aborted request's chunks
    eng.add_request(EngineRequest(rid="b", input_ids=p, sampling=SamplingParams(max_new_tokens=5, **GREEDY)))
    outs = run_all(eng)
    assert outs["b"][-1].cached_tokens == 16
    assert tokens(outs["b"]) == reference(hf_model, p, 5)


def test_abort_mid_decode_with_radix_cache(engine_factory, tiny_llama_path):
    eng = engine_factory(tiny_llama_path, page_size=2, max_running_requests=3)
    ps = prompts(eng.runner.vocab_size, (9, 14, 5))
    for i, p in enumerate(ps):
        eng.add_request(EngineRequest(rid=f"r{i}", input_ids=p, sampling=SamplingParams(max_new_tokens=30, **GREEDY)))
    for _ in range(5):
        eng.step()
        eng.check_invariants()
    eng.abort_request("r1")
    outs = {o.rid: o for o in eng.step()}
    assert outs["r1"].finish_reason == "abort" and outs["r1"].completion_tokens == 5
    eng.check_invariants()
    rest = run_all(eng)
    assert "r1" not in rest and {"r0", "r2"} <= set(rest)
    assert eng.metrics()["kv_used_tokens"] == 0
    assert eng.prefix_match_len(ps[1]) == 14  # the aborted request's prompt stayed cached


def test_request_beyond_the_context_is_an_error(engine_factory, tiny_llama_path):
    # the request layer fits requests to the context; the engine refuses what was not fitted
    eng = engine_factory(tiny_llama_path, max_seq_len_override=32)
    eng.add_request(EngineRequest(rid="over", input_ids=[9] * 40, sampling=SamplingParams(max_new_tokens=4)))
    eng.add_request(EngineRequest(rid="full", input_ids=[9] * 31, sampling=SamplingParams(max_new_tokens=4)))
    eng.add_request(EngineRequest(rid="fits", input_ids=[9] * 31, sampling=SamplingParams(max_new_tokens=1, **GREEDY)))
    outs = run_all(eng)
    for rid, n in (("over", 40), ("full", 31)):
        (o,) = outs[rid]
        assert o.finished and o.finish_reason == "error" and o.new_token_ids == []
        assert o.error_kind == "context_length_exceeded" and "the context is 32 tokens" in o.error
        assert o.prompt_tokens == n
    assert len(tokens(outs["fits"])) == 1 and outs["fits"][-1].finish_reason == "length"


@pytest.mark.parametrize("knobs", [dict(), dict(max_prefill_length=5), dict(num_pages=20, max_running_requests=4)],
                         ids=["plain", "chunked", "retraction"])
def test_page_size_2_matches_transformers(engine_factory, tiny_llama_path, hf_model, knobs):
    eng = engine_factory(tiny_llama_path, page_size=2, **knobs)
    ps = prompts(eng.runner.vocab_size, (5, 8, 3, 11, 7))
    ps.append(ps[3][:6] + [21, 22, 23])  # an odd-length shared prefix: 3 whole pages match
    for i, p in enumerate(ps):
        eng.add_request(EngineRequest(rid=f"r{i}", input_ids=p, sampling=SamplingParams(max_new_tokens=8, **GREEDY)))
    outs = run_all(eng)
    for i, p in enumerate(ps):
        assert tokens(outs[f"r{i}"]) == reference(hf_model, p, 8), f"request {i}"


def test_retracted_request_is_readmitted_from_the_cache(engine_factory, tiny_llama_path, hf_model):
    # 4 requests of 12 + 16 tokens need 4 x 7 pages of 4; the pool has 20: decodes retract
    eng = engine_factory(tiny_llama_path, num_pages=20, page_size=4, max_running_requests=4, max_prefill_length=64)
    ps = prompts(eng.runner.vocab_size, (12, 12, 12, 12), seed=3)
    for i, p in enumerate(ps):
        eng.add_request(EngineRequest(rid=f"r{i}", input_ids=p, sampling=SamplingParams(max_new_tokens=16, **GREEDY)))
    outs = run_all(eng)
    c = eng.scheduler.counters
    assert c["retractions_total"] > 0
    assert c["readmit_cached_tokens_total"] > 0  # readmission reused the retracted KV
    for i, p in enumerate(ps):
        assert tokens(outs[f"r{i}"]) == reference(hf_model, p, 16), f"request {i}"
        assert outs[f"r{i}"][-1].cached_tokens == 0  # usage reports the first admission only
