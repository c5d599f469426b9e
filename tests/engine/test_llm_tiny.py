"""The offline API on a tiny model: n > 1 fans out into n sequences with seeds seed + i."""

import pytest

from minisgl import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama_path):
    with LLM(tiny_llama_path, dtype="float32", backend="hf") as llm:
        yield llm


def test_n_sequences_use_seed_plus_i_and_count_usage(llm):
    prompt = [11, 12, 13, 14, 15, 16, 17]
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=40, n=3, ignore_eos=True)
    before = llm.metrics()
    (out,) = llm.generate(prompt, params)
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert out.prompt_tokens == len(prompt) and out.prompt_token_ids == prompt
    singles = [
        llm.generate(prompt, SamplingParams(temperature=1.0, max_new_tokens=6, seed=40 + i, ignore_eos=True))[0]
        for i in range(3)
    ]
    assert [o.token_ids for o in out.outputs] == [s.token_ids for s in singles]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    assert all(len(o.token_ids) == 6 and o.finish_reason == "length" for o in out.outputs)
    after = llm.metrics()
    # three sequences of 6 tokens, then three single requests of 6
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == 36
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == 6 * len(prompt)
    assert after["requests_finished_total"] - before["requests_finished_total"] == 6
    llm.engine.check_invariants()


def test_prompt_longer_than_context_raises(llm):
    too_long = [7] * (llm.engine.max_context_len + 3)
    with pytest.raises(ValueError, match="maximum context length"):
        llm.generate(too_long, SamplingParams(max_new_tokens=2))
    assert not llm.engine.has_work()
