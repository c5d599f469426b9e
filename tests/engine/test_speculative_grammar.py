"""Speculative decoding under structured outputs: drafts are cut to what the grammar allows,
every verify position is sampled under the mask of the grammar's state after the drafts
before it, and the matcher advances by the emitted tokens alone. Output equals plain
decoding token for token (greedy, and seeded sampling draw for draw) and follows the
grammar; drafts of constrained requests are accepted."""

import json
import re

import jsonschema
import pytest
import torch
from engine_helpers import make_engine, run_all, tokens

from minisgl import LLM, SamplingParams
from minisgl.engine.messages import EngineRequest
from minisgl.grammar import LLGuidance

SPEC = dict(speculative_algorithm="ngram", speculative_num_draft_tokens=4)
pytestmark = pytest.mark.usefixtures("always_draft")

COLORS = ["dark cerulean blue with a hint of sea green", "pale golden yellow like the light of early morning"]
SCHEMA = {
    "type": "object",
    "properties": {"colors": {"type": "array", "items": {"enum": COLORS}, "minItems": 4, "maxItems": 4}},
    "required": ["colors"],
    "additionalProperties": False,
}
LINE = "one two three four five six. "
REGEX = f"({re.escape(LINE)}){{5}}"


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def run(engine, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
    for i, (ids, p) in enumerate(zip(prompts, params)):
        engine.add_request(EngineRequest(rid=f"r{i}", input_ids=ids, sampling=p))
    outs = run_all(engine)
    return [tokens(outs[f"r{i}"]) for i in range(len(prompts))]


def both(model: str, prompts, params, spec: dict = SPEC) -> tuple[list[list[int]], list[list[int]], dict]:
    """(plain tokens, drafted tokens, the drafted engine's metrics)."""
    plain = run(make_engine(model), prompts, params)
    engine = make_engine(model, **spec)
    drafted = run(engine, prompts, params)
    return plain, drafted, engine.metrics()


def test_greedy_json_schema_and_regex_equal_plain_decoding_with_drafts_accepted(smollm2_path, tokenizer):
    prompts = [tokenizer.encode(f"Favourite colours, as JSON: {json.dumps({'colors': COLORS * 2})}\n"
                                "Two more lists:\n"),
               tokenizer.encode(f"Count, five times: {LINE}")]
    params = [SamplingParams(temperature=0.0, max_new_tokens=120, json_schema=json.dumps(SCHEMA)),
              SamplingParams(temperature=0.0, max_new_tokens=60, regex=REGEX)]
    plain, drafted, m = both(smollm2_path, prompts, params)
    assert drafted == plain
    text = [tokenizer.decode(t, skip_special_tokens=True) for t in drafted]
    jsonschema.validate(json.loads(text[0]), SCHEMA)
    assert text[1] == LINE * 5
    # the n-gram lookup found the repeated strings and the grammar let the drafts through
    assert m["spec_accepted_tokens_total"] > 0 and m["spec_mean_accepted_length"] > 1.5


def test_a_draft_model_drafts_under_a_grammar(smollm2_path, tokenizer):
    """The standalone proposer's drafts are cut and checked alike (the target itself drafts:
    its guesses are what the grammar lets greedy decoding take)."""
    spec = dict(speculative_algorithm="standalone", speculative_draft_model_path=smollm2_path,
                speculative_num_draft_tokens=4)
    params = [SamplingParams(temperature=0.0, max_new_tokens=60, regex=REGEX)]
    plain, drafted, m = both(smollm2_path, [tokenizer.encode("Count: one two")], params, spec)
    assert drafted == plain and tokenizer.decode(drafted[0], skip_special_tokens=True) == LINE * 5
    assert m["spec_acceptance_rate"] > 0.5


def test_seeded_sampled_grammar_requests_draw_the_same_valid_tokens_through_llm(smollm2_path):
    prompt = f"Favourite colours, as JSON: {json.dumps({'colors': COLORS * 2})}\n"
    params = [SamplingParams(temperature=0.8, max_new_tokens=120, seed=s, n=2, json_schema=json.dumps(SCHEMA))
              for s in range(2)]

    def answers(llm) -> list[tuple[list[int], str]]:
        return [(o.token_ids, o.text) for p in params for o in llm.generate(prompt, p)[0].outputs]

    with LLM(smollm2_path, dtype="float32", backend="hf") as llm:
        plain = answers(llm)
    with LLM(smollm2_path, dtype="float32", backend="hf", **SPEC) as llm:
        drafted = answers(llm)
        assert llm.metrics()["spec_accepted_tokens_total"] > 0
    assert drafted == plain
    for _, text in drafted:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_drafts_are_cut_where_the_grammar_refuses_or_completes(tokenizer):
    """llguidance's draft checks: the prefix the grammar allows, short of the token that
    completes it; one mask per verify row, each the state after the drafts before it; the
    matcher left where it was."""
    backend = LLGuidance(tokenizer)
    matcher = backend.matcher("regex", "(abc)+x")
    abc, x = tokenizer.encode("abc"), tokenizer.encode("x")
    assert len(abc) == 1 and len(x) == 1
    other = tokenizer.encode("zz")[0]
    assert backend.draft_prefix(matcher, abc * 3) == 3
    assert backend.draft_prefix(matcher, abc * 2 + [other] + abc) == 2  # refused from the third
    assert backend.draft_prefix(matcher, abc + x + abc) == 1  # "x" completes the grammar: the sample's
    assert backend.draft_prefix(matcher, x) == 0  # the matcher never moved: "x" is not allowed first

    words = -(-len(tokenizer) // 32)
    drafted = torch.zeros(4, words, dtype=torch.int32)
    backend.fill_drafts([(matcher, 1, abc * 2)], drafted)

    def allowed(row: torch.Tensor) -> set[int]:
        return {t for t in range(len(tokenizer)) if int(row[t // 32]) >> (t % 32) & 1}

    plain = torch.zeros(1, words, dtype=torch.int32)
    backend.fill([(matcher, 0)], plain)
    assert allowed(drafted[0]) == set()  # rows of other requests untouched
    assert allowed(drafted[1]) == allowed(plain[0]) and x[0] not in allowed(plain[0])
    assert x[0] in allowed(drafted[2]) and allowed(drafted[2]) == allowed(drafted[3])
    assert backend.draft_prefix(matcher, x) == 0 and backend.accept([(matcher, abc[0])]) == [True]
