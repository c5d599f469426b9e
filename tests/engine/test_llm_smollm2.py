"""The offline API on the real smollm2-135m: greedy equals transformers' generate."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from minisgl import LLM, SamplingParams

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little robot who",
    "def fibonacci(n):",
    "List three colors:",
    "Water boils at",
    "In 1969, humans first",
    "The quick brown fox",
    "A haiku about the sea:\n",
]


@pytest.fixture(scope="module")
def llm(smollm2_path):
    with LLM(smollm2_path, dtype="float32", backend="hf", max_prefill_length=64) as llm:
        yield llm


@pytest.fixture(scope="module")
def hf(smollm2_path):
    return AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()


def ref(hf, tok, prompt, n):
    ids = tok(prompt, return_tensors="pt").input_ids
    return hf.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1]:].tolist()


def test_batch_greedy_equals_generate_with_chunks_and_cache(llm, hf):
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=16))
    for p, o in zip(PROMPTS, outs):
        assert o.token_ids == ref(hf, llm.tokenizer, p, 16), p
    again = llm.generate(PROMPTS[:2], SamplingParams(temperature=0, max_new_tokens=16))
    assert [o.token_ids for o in again] == [o.token_ids for o in outs[:2]]
    assert all(o.cached_tokens > 0 for o in again)
    llm.engine.check_invariants()


def test_seeds_stop_strings_and_n(llm):
    sp = SamplingParams(temperature=1.0, max_new_tokens=12, seed=7)
    a, b = llm.generate([PROMPTS[1]] * 2, [sp, sp])
    c = llm.generate(PROMPTS[1], SamplingParams(temperature=1.0, max_new_tokens=12, seed=8))[0]
    assert a.text == b.text and a.text != c.text
    greedy = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_new_tokens=8))[0].text
    stop = greedy.strip().split()[0][1:3]  # inside the first word: straddles tokens or not
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_new_tokens=8, stop=[stop]))[0]
    assert out.finish_reason == "stop" and stop not in out.text and greedy.startswith(out.text)
    many = llm.generate(PROMPTS[2], SamplingParams(temperature=1.0, max_new_tokens=6, seed=1, n=3))[0]
    assert len(many.outputs) == 3 and len({tuple(o.token_ids) for o in many.outputs}) > 1
    streamed = "".join(d.text for d in llm.stream(PROMPTS[0], SamplingParams(temperature=0, max_new_tokens=8)))
    assert streamed == greedy
    llm.engine.check_invariants()
    assert llm.metrics()["num_running_reqs"] == 0
