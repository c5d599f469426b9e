"""Speculative decoding with the standalone proposer: a draft model with the target's
tokenizer on the same backend, with a KV pool of its own. The target is the real
smollm2-135m (greedy equality needs real weights: see test_speculative.py); the drafts come
from smollm2 itself (nearly all accepted) or from a tiny random model that shares its
tokenizer (mostly rejected), and either way the tokens are those of plain decoding."""

import shutil
import socket
from pathlib import Path

import pytest
import torch
from engine_helpers import make_engine, run_all, tokens

from minisgl import LLM, SamplingParams
from minisgl.engine.draft_model import StandaloneProposer
from minisgl.engine.messages import EngineRequest
from minisgl.settings import SettingsError, load_settings, settings_from_kwargs

pytestmark = pytest.mark.usefixtures("always_draft")

LOOP = [1011, 1012, 1013, 1014, 1015, 1016, 1017, 1018] * 6
PROMPTS = [LOOP, [3030, 3031, 3032, 3033, 17, 99, 1234], [2040, 7, 2041, 8, 2042, 9, 2043, 10]]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=20, ignore_eos=True)


@pytest.fixture(scope="module")
def random_draft_path(smollm2_path, tmp_path_factory) -> str:
    """A tiny random llama with smollm2's tokenizer (and a shorter context)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("random-draft")
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(smollm2_path) / name, out / name)
    return str(out)


def standalone(draft: str) -> dict:
    return dict(speculative_algorithm="standalone", speculative_draft_model_path=draft,
                speculative_num_draft_tokens=4)


def run(engine, prompts, params=GREEDY):
    for i, ids in enumerate(prompts):
        engine.add_request(EngineRequest(rid=f"r{i}", input_ids=ids, sampling=params))
    outs = run_all(engine)  # checks the target's and the draft's pools after every step
    return [tokens(outs[f"r{i}"]) for i in range(len(prompts))]


@pytest.fixture(scope="module")
def plain(smollm2_path):
    return run(make_engine(smollm2_path, num_pages=400), PROMPTS)


def test_the_target_itself_as_draft_gives_plain_tokens_with_nearly_every_draft_accepted(smollm2_path, plain):
    engine = make_engine(smollm2_path, num_pages=400, **standalone(smollm2_path))
    assert run(engine, PROMPTS) == plain
    m = engine.metrics()
    assert m["spec_draft_tokens_total"] > 0 and m["spec_acceptance_rate"] > 0.9
    assert m["generation_tokens_total"] == len(PROMPTS) * GREEDY.max_new_tokens
    assert engine.scheduler.speculation.proposer.states == {}  # finished requests gave their draft KV back
    engine.shutdown()


def test_a_random_draft_model_gives_plain_tokens(smollm2_path, random_draft_path, plain):
    engine = make_engine(smollm2_path, num_pages=400, **standalone(random_draft_path))
    assert run(engine, PROMPTS) == plain
    m = engine.metrics()
    assert m["spec_draft_tokens_total"] > 0 and m["spec_acceptance_rate"] < 0.9
    engine.shutdown()


def test_retractions_and_rejected_drafts_leave_both_pools_consistent(smollm2_path, random_draft_path):
    prompts = [LOOP[i:] + [2050 + i] for i in range(6)]
    params = SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True)
    want = run(make_engine(smollm2_path, num_pages=160), prompts, params)
    engine = make_engine(smollm2_path, num_pages=160, **standalone(random_draft_path))
    assert run(engine, prompts, params) == want
    assert engine.metrics()["retractions_total"] > 0
    assert engine.scheduler.speculation.proposer.states == {}


def test_the_draft_kv_follows_the_request_and_makes_room_by_dropping_the_oldest(smollm2_path):
    """Drafts from kept K/V (cut back past the tokens the request no longer has) equal
    drafts from scratch; a pool that holds one request's draft K/V drops the other's."""
    settings = settings_from_kwargs(model=smollm2_path, dtype="float32", backend="hf", num_pages=80,
                                    **standalone(smollm2_path))
    kept, fresh = StandaloneProposer(settings), StandaloneProposer(settings)
    a = [3030, 3031, 3032, 3033, 17, 99, 1234] * 4
    first = kept.propose("a", a, 4)
    assert len(first) == 4 and kept.states["a"].kv_len == len(a) + 3
    # the target took one draft, then (drafts paused) decoded other tokens than the drafts
    a2 = a + first[:1] + [first[1] + 1, first[2] + 1, 2222, 2223]
    assert kept.propose("a", a2, 4) == fresh.propose("x", a2, 4)
    assert kept.states["a"].kv_len == len(a2) + 3
    kept.check()
    # "b" needs most of the pool: "a" loses its draft K/V, "b" drafts as from scratch
    b = [3000 + i for i in range(60)]
    assert kept.propose("b", b, 4) == fresh.propose("y", b, 4)
    assert list(kept.states) == ["b"]
    kept.check()
    kept.release("b")
    assert kept.states == {} and kept.kv.pool.free_pages == kept.kv.pool.num_pages
    # a draft past the tokenizer's ids (embedding padding) ends the drafts before it
    b2 = b + [2]
    whole = fresh.propose("y", b2, 4)
    kept.num_tokens = max(whole)
    cut = kept.propose("b", b2, 4)
    assert cut == whole[: whole.index(max(whole))]
    assert kept.states["b"].all_ids == b2 + cut
    kept.check()
    kept.num_tokens = fresh.num_tokens
    # a batch drafts what each request drafts alone; a request the pool cannot add without
    # taking another's draft K/V from this batch drafts nothing
    p, q, r = ([4000 + 10 * j + i for i in range(27)] for j in range(3))  # 30, 29 and 30 of 80 slots
    alone = [fresh.propose("p", p, 4), fresh.propose("q", q, 4)]
    assert kept.propose_batch([("p", p, 4), ("q", q, 3), ("r", r, 4)]) == [alone[0], alone[1][:3], []]
    assert set(kept.states) == {"p", "q"}
    kept.check()
    # nothing to draft when the request cannot fit the draft pool at all
    assert kept.propose("c", [5] * 79, 4) == []


def test_a_draft_model_with_another_tokenizer_is_refused(smollm2_path, tiny_llama_path):
    with pytest.raises(ValueError, match="tokenizer differs") as info:
        make_engine(smollm2_path, **standalone(tiny_llama_path))
    assert tiny_llama_path in str(info.value) and str(smollm2_path) in str(info.value)


def test_a_tensor_parallel_target_drafts_with_a_draft_model_on_rank_0(smollm2_path):
    """backend-sgl, two ranks on the CPU (gloo); the draft model runs whole beside rank 0,
    outside the group, and the tokens are those of the same target without drafts."""
    def tp_engine(**kw):
        with socket.socket() as s:  # the group meets at --port + 1
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1] - 1
        return make_engine(smollm2_path, backend="sgl", device="cpu", tp_size=2, port=port, num_pages=400, **kw)

    engine = tp_engine()
    try:
        want = run(engine, PROMPTS)
    finally:
        engine.shutdown()
    engine = tp_engine(**standalone(smollm2_path))
    try:
        draft_runner = engine.scheduler.speculation.proposer.runner
        assert draft_runner.tp is None and engine.runner.tp is not None and engine.runner.tp.size == 2
        assert run(engine, PROMPTS) == want
        m = engine.metrics()
        assert m["spec_accepted_tokens_total"] > 0 and m["spec_acceptance_rate"] > 0.9
    finally:
        engine.shutdown()


def test_the_draft_model_path_goes_with_the_standalone_proposer_only():
    with pytest.raises(SettingsError, match="speculative_draft_model_path.*name one"):
        load_settings(flags={"speculative_algorithm": "standalone"}, environ={})
    with pytest.raises(SettingsError, match="speculative_draft_model_path.*it is ngram"):
        load_settings(flags={"speculative_algorithm": "ngram", "speculative_draft_model_path": "/m"}, environ={})
    s, _ = load_settings(environ={"SPECULATIVE_ALGORITHM": "standalone", "SPECULATIVE_DRAFT_MODEL_PATH": "/m"})
    assert (s.speculative_algorithm, s.speculative_draft_model_path) == ("standalone", "/m")


def test_llm_streams_with_a_draft_model(smollm2_path, plain):
    with LLM(smollm2_path, dtype="float32", backend="hf", num_pages=400, **standalone(smollm2_path)) as llm:
        deltas = list(llm.stream(PROMPTS[0], GREEDY))
        assert llm.metrics()["spec_accepted_tokens_total"] > 0
    assert [t for d in deltas for t in d.token_ids] == plain[0]
    assert any(len(d.token_ids) > 1 for d in deltas)


def test_seeded_sampling_draws_the_same_tokens_with_a_draft_model(tiny_llama_path):
    """Greedy drafts verified by sampling: each output index draws the same noise with or
    without them, so a seeded request gives the same tokens (a low temperature: some drafts
    are accepted, some rejected)."""
    params = [SamplingParams(temperature=0.05, max_new_tokens=10, ignore_eos=True, seed=s) for s in range(6)]
    prompt = list(range(5, 60))

    def sample(engine):
        for i, p in enumerate(params):
            engine.add_request(EngineRequest(rid=f"s{i}", input_ids=prompt, sampling=p))
        outs = run_all(engine)
        return [tokens(outs[f"s{i}"]) for i in range(len(params))]

    plain = sample(make_engine(tiny_llama_path, max_running_requests=3))
    engine = make_engine(tiny_llama_path, max_running_requests=3, **standalone(tiny_llama_path))
    assert sample(engine) == plain
    m = engine.metrics()
    assert m["spec_accepted_tokens_total"] > 0
