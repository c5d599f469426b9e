"""The scheduler on the real backend-hf runner with a tiny random model: greedy outputs equal
transformers' generate under chunked prefill, paging, prefix hits and retraction, and the
KV pool invariant holds after every step."""

import pytest
import torch
from engine_helpers import GREEDY, prompts, reference, run_all, tokens
from transformers import AutoModelForCausalLM

from minisgl import SamplingParams
from minisgl.engine.messages import EngineRequest


@pytest.fixture(scope="module")
def hf_model(tiny_qwen3_path):
    return AutoModelForCausalLM.from_pretrained(tiny_qwen3_path, dtype=torch.float32).eval()


@pytest.mark.parametrize(
    "knobs",
    [
        dict(),  # one batch, big pool
        dict(max_prefill_length=7, page_size=4),  # chunked prefill, pages
        dict(num_pages=24, page_size=4, max_running_requests=4, max_prefill_length=16),  # retraction
    ],
    ids=["plain", "chunked", "retraction"],
)
def test_greedy_matches_transformers(engine_factory, tiny_qwen3_path, hf_model, knobs):
    eng = engine_factory(tiny_qwen3_path, **knobs)
    ps = prompts(eng.runner.vocab_size, (5, 17, 30, 9, 40, 12, 3, 25))
    ps.append(ps[2][:20] + [7, 8, 9])  # shares a prefix with prompt 2
    for i, p in enumerate(ps):
        eng.add_request(EngineRequest(rid=f"r{i}", input_ids=p, sampling=SamplingParams(max_new_tokens=12, **GREEDY)))
    outs = run_all(eng)
    for i, p in enumerate(ps):
        assert tokens(outs[f"r{i}"]) == reference(hf_model, p, 12), f"request {i}"
        assert outs[f"r{i}"][-1].finish_reason == "length"
    if "num_pages" in knobs:
        assert eng.metrics()["retractions_total"] > 0


def test_prefix_cache_hits_reuse_slots(engine_factory, tiny_qwen3_path, hf_model):
    eng = engine_factory(tiny_qwen3_path, page_size=4)
    (system,) = prompts(eng.runner.vocab_size, (24,))
    assert eng.warm([system]) == 24
    ps = [system + tail for tail in prompts(eng.runner.vocab_size, (3, 6, 1), seed=1)]
    for i, p in enumerate(ps):
        eng.add_request(EngineRequest(rid=f"r{i}", input_ids=p, sampling=SamplingParams(max_new_tokens=6, **GREEDY)))
    outs = run_all(eng)
    for i, p in enumerate(ps):
        assert outs[f"r{i}"][-1].cached_tokens == 24
        assert tokens(outs[f"r{i}"]) == reference(hf_model, p, 6)
    assert eng.prefix_match_len(ps[0]) >= 24
    m = eng.metrics()
    assert m["cache_hits"] == 3 and m["cached_tokens_total"] == 72 and m["kv_cached_tokens"] > 0
    assert eng.flush_cache() > 0 and eng.metrics()["kv_cached_tokens"] == 0


def test_abort_mid_decode_frees_everything(engine_factory, tiny_qwen3_path):
    eng = engine_factory(tiny_qwen3_path, cache_type="naive")
    ps = prompts(eng.runner.vocab_size, (10, 20))
    for i, p in enumerate(ps):
        eng.add_request(EngineRequest(rid=f"r{i}", input_ids=p, sampling=SamplingParams(max_new_tokens=50, **GREEDY)))
    for _ in range(4):
        eng.step()
    eng.abort_request("r0")
    eng.abort_request("r1", "stop")
    outs = {o.rid: o for o in eng.step()}
    assert outs["r0"].finish_reason == "abort" and outs["r1"].finish_reason == "stop"
    assert not eng.has_work()
    eng.check_invariants()
    m = eng.metrics()
    assert m["kv_used_tokens"] == 0 and m["requests_aborted_total"] == 1
    eng.abort_request("r0")  # unknown by now: a no-op
    assert eng.step() == []


def test_finish_reasons_and_errors(engine_factory, tiny_qwen3_path, hf_model):
    eng = engine_factory(tiny_qwen3_path, num_pages=64, max_seq_len_override=256)
    (p,) = prompts(eng.runner.vocab_size, (8,))
    ref = reference(hf_model, p, 6)
    stop_at = ref[3]
    eng.add_request(EngineRequest(rid="stop", input_ids=p, sampling=SamplingParams(max_new_tokens=6, stop_token_ids=[stop_at], **GREEDY)))
    eng.add_request(EngineRequest(rid="min", input_ids=p, sampling=SamplingParams(max_new_tokens=6, min_new_tokens=6, stop_token_ids=[stop_at], **GREEDY)))
    eng.add_request(EngineRequest(rid="long", input_ids=p * 40, sampling=SamplingParams(max_new_tokens=3)))
    eng.add_request(EngineRequest(rid="pool", input_ids=p * 9, sampling=SamplingParams(max_new_tokens=3)))
    eng.add_request(EngineRequest(rid="vocab", input_ids=[10**9], sampling=SamplingParams(max_new_tokens=3)))
    eng.add_request(EngineRequest(rid="bad", input_ids=p, sampling=SamplingParams(top_p=0.0)))
    outs = run_all(eng)
    assert tokens(outs["stop"]) == ref[: ref.index(stop_at) + 1] and outs["stop"][-1].finish_reason == "stop"
    assert len(tokens(outs["min"])) == 6
    assert "context" in outs["long"][-1].error and outs["long"][-1].finish_reason == "error"
    assert "KV pool" in outs["pool"][-1].error
    assert "vocabulary" in outs["vocab"][-1].error
    assert "no max_new_tokens" in outs["bad"][-1].error
    kinds = {rid: outs[rid][-1].error_kind for rid in ("long", "pool", "vocab", "bad")}
    assert kinds == {"long": "context_length_exceeded", "pool": "context_length_exceeded",
                     "vocab": "invalid_request", "bad": "invalid_request"}


def test_seeded_sampling_survives_retraction(engine_factory, tiny_qwen3_path):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=123, ignore_eos=True)
    results = []
    for knobs in (dict(), dict(num_pages=16, page_size=4, max_running_requests=4)):
        eng = engine_factory(tiny_qwen3_path, **knobs)
        ps = prompts(eng.runner.vocab_size, (12, 15, 9))
        for i, p in enumerate(ps):
            eng.add_request(EngineRequest(rid=f"r{i}", input_ids=p, sampling=params))
        outs = run_all(eng)
        results.append([tokens(outs[f"r{i}"]) for i in range(3)])
    assert results[0] == results[1]


def test_prefix_cache_is_bounded_by_the_pool_by_default(engine_factory, tiny_qwen3_path):
    """The PREFIX_CACHE_* limits unset: a re-sent workload of 16 prompts over 2048 tokens
    each (more than the original's 8 leaves and 2048-token inserts) hits the cache."""
    eng = engine_factory(tiny_qwen3_path, page_size=4, max_prefill_length=8192)
    ps = prompts(eng.runner.vocab_size, [2100 + 8 * i for i in range(16)], seed=3)
    for round_ in range(2):
        for i, p in enumerate(ps):
            eng.add_request(EngineRequest(rid=f"{round_}-{i}", input_ids=p,
                                          sampling=SamplingParams(max_new_tokens=2, **GREEDY)))
        outs = run_all(eng, check=False)
    for i in range(len(ps)):
        assert outs[f"1-{i}"][-1].cached_tokens >= 2048, f"prompt {i}"
    assert eng.metrics()["cache_hits"] >= 16


def test_a_cpu_engine_prefills_in_small_chunks_unless_told(engine_factory, tiny_qwen3_path, caplog):
    """--max-prefill-length unset: a CPU engine takes a long prompt in chunks of 512 tokens,
    so the decodes batched beside it keep streaming; the flag still overrides."""
    from minisgl.engine.scheduler import ACCELERATOR_PREFILL_CHUNK, CPU_PREFILL_CHUNK, prefill_chunk

    assert prefill_chunk(None, "cuda") == ACCELERATOR_PREFILL_CHUNK and prefill_chunk(300, "cpu") == 300
    with caplog.at_level("INFO", logger="minisgl.engine"):
        eng = engine_factory(tiny_qwen3_path)
    assert f"prefill chunks of at most {CPU_PREFILL_CHUNK} tokens" in caplog.text
    short, long_ = prompts(eng.runner.vocab_size, (8, 3 * CPU_PREFILL_CHUNK - 10), seed=5)
    eng.add_request(EngineRequest(rid="short", input_ids=short, sampling=SamplingParams(max_new_tokens=20, **GREEDY)))
    eng.step()  # the short prompt's prefill: it decodes from now on
    eng.add_request(EngineRequest(rid="long", input_ids=long_, sampling=SamplingParams(max_new_tokens=1, **GREEDY)))
    steps_until_long, short_tokens = 0, 0
    while True:
        outs = {o.rid: o for o in eng.step()}
        steps_until_long += 1
        short_tokens += len(outs["short"].new_token_ids) if "short" in outs else 0
        if "long" in outs:
            break
    assert steps_until_long == 3 and short_tokens == 3  # a decode token beside every chunk
    run_all(eng)
    assert engine_factory(tiny_qwen3_path, max_prefill_length=4096).scheduler.max_prefill == 4096
