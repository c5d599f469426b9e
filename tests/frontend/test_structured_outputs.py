"""Structured outputs: a tiny random model answers only what its grammar allows, through
LLM, /generate and the OpenAI routes (the official client); a constraint that cannot compile
is a 400 that says why."""

from __future__ import annotations

import contextlib
import json
import re
import time
from concurrent.futures import Future

import httpx
import jsonschema
import numpy as np
import openai
import pytest
import torch
from server_process import start_server

from minisgl import LLM, SamplingParams, grammar
from minisgl.engine.batch import SamplingBatch
from minisgl.engine.sampler import bitmask_logits, vocab_mask_words
from minisgl.frontend.errors import RequestError
from minisgl.grammar import GrammarError, LLGuidance
from minisgl.hookspecs import hookimpl
from minisgl.plugins import Registry, SelectionError, set_registry
from minisgl.specs import GrammarBackendSpec

SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "name": {"type": "string", "maxLength": 8},
    },
    "required": ["color", "n", "ok", "name"],
    "additionalProperties": False,
}
CHAT = [{"role": "user", "content": "Describe a thing as JSON."}]


def test_the_sampler_bans_what_the_bitmask_clears():
    logits = torch.zeros(2, 40)
    mask = torch.full((2, 2), -1, dtype=torch.int32)
    mask[0] = torch.tensor([0b1010, -(1 << 31) | 1], dtype=torch.int32)  # row 0 allows tokens 1, 3, 32 and 63
    filled = Future()
    filled.set_result(mask)
    sampling = SamplingBatch(*[torch.zeros(2)] * 9, vocab_mask=filled)
    allowed = bitmask_logits(logits, vocab_mask_words(sampling, logits.device)) > float("-inf")
    assert allowed[0].nonzero().flatten().tolist() == [1, 3, 32]  # 63 is past the 40-token vocabulary
    assert bool(allowed[1].all())


def test_llm_answers_follow_their_schema_and_regex_whatever_the_seed(tiny_qwen3_path):
    with LLM(tiny_qwen3_path, dtype="float32") as llm:
        for seed in range(3):
            params = SamplingParams(max_new_tokens=256, temperature=1.0, seed=seed, json_schema=json.dumps(SCHEMA))
            out = llm.generate(["Give me JSON:"], params)[0].outputs[0]
            assert out.finish_reason == "stop", out.text
            jsonschema.validate(json.loads(out.text), SCHEMA)
        pattern = r"[a-c]{3}-[0-9]{2}"
        outs = llm.generate(["id:"] * 3, SamplingParams(max_new_tokens=20, temperature=1.0, seed=7, n=2, regex=pattern))
        for out in (o for r in outs for o in r.outputs):
            assert re.fullmatch(pattern, out.text) and out.finish_reason == "stop", out.text
        # without a grammar the same random model writes no JSON at all
        free = llm.generate(["Give me JSON:"], SamplingParams(max_new_tokens=16, temperature=1.0, seed=0))[0]
        with pytest.raises(ValueError):
            json.loads(free.outputs[0].text)
        with pytest.raises(RequestError, match="'json_schema' cannot be compiled: Invalid type: objectx"):
            llm.generate(["x"], SamplingParams(json_schema='{"type": "objectx"}'))
        with pytest.raises(RequestError, match="'regex' .*at most one of json_schema, regex and ebnf"):
            llm.generate(["x"], SamplingParams(json_schema="{}", regex="a"))


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path_factory.mktemp("server-structured"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_llm_builds_one_tokenizer_view_to_check_and_to_mask(tiny_qwen3_path, monkeypatch):
    built = []
    build = grammar._llguidance().hf.from_tokenizer
    monkeypatch.setattr(grammar, "_views", {})
    monkeypatch.setattr(grammar._llguidance().hf, "from_tokenizer", lambda *a, **k: built.append(k) or build(*a, **k))
    with LLM(tiny_qwen3_path, dtype="float32") as llm:
        for regex in ("(yes|no)", "[ab]+"):
            assert llm.generate(["x"], SamplingParams(max_new_tokens=8, regex=regex))[0].finish_reason is not None
    # the request layer checked both, the engine masked both, over one view of the tokenizer
    assert built == [{"n_vocab": llm.frontend.vocab_size}]


def test_chat_json_schema_answers_validate_across_seeds(client):
    model = client.models.list().data[0].id
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
    for seed in range(3):
        r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=256, temperature=1.0, seed=seed,
                                           response_format=fmt)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    stream = client.chat.completions.create(model=model, messages=CHAT, max_tokens=256, temperature=1.0, seed=0,
                                            response_format=fmt, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    first = client.chat.completions.create(model=model, messages=CHAT, max_tokens=256, temperature=1.0, seed=0,
                                           response_format=fmt)
    assert streamed == first.choices[0].message.content
    # any object: a random model may write one key forever, but what it writes is an object's start
    anything = client.chat.completions.create(model=model, messages=CHAT, max_tokens=64, temperature=1.0, seed=1,
                                              response_format={"type": "json_object"}).choices[0]
    assert anything.message.content.lstrip().startswith("{")
    if anything.finish_reason == "stop":
        assert isinstance(json.loads(anything.message.content), dict)


def test_completions_and_generate_take_sglangs_constraints(client, server):
    model = client.models.list().data[0].id
    r = client.completions.create(model=model, prompt="code:", max_tokens=20, temperature=1.0, seed=3,
                                  extra_body={"regex": "(yes|no)!"})
    assert r.choices[0].text in ("yes!", "no!")
    body = {"text": "flag:", "sampling_params": {"max_new_tokens": 64, "temperature": 1.0, "seed": 5,
                                                   "json_schema": json.dumps({"type": "boolean"})}}
    out = httpx.post(server.url + "/generate", json=body, timeout=60).json()
    assert json.loads(out["text"]) in (True, False)


@pytest.mark.parametrize(("kwargs", "param", "why"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}},
     "response_format", "Invalid type: objectx"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format",
     "needs json_schema.schema"),
    ({"extra_body": {"regex": "a(b"}}, "regex", "unclosed group"),
    ({"extra_body": {"ebnf": "root ::= undefined_rule"}}, "ebnf", "undefined_rule"),
])
def test_a_constraint_that_cannot_compile_is_a_400_that_says_why(client, kwargs, param, why):
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, **kwargs)
    assert err.value.body["param"] == param and why in err.value.body["message"]


class ChoicesBackend:
    """A third party's grammar backend: only `regex` alternations of words, (a|b|c), masked
    by string prefixes over the vocabulary's texts."""

    def __init__(self, hf_tokenizer, vocab_size=None):
        self.texts = [hf_tokenizer.decode([i]) if i < len(hf_tokenizer) else "" for i in range(vocab_size or len(hf_tokenizer))]
        self.fills = 0

    def check(self, field, source):
        if field != "regex" or not re.fullmatch(r"\(([a-z]+\|)*[a-z]+\)", source):
            raise GrammarError("the choices backend takes only regex (a|b|...)")

    def matcher(self, field, source):
        self.check(field, source)
        return ChoiceMatcher(self, source[1:-1].split("|"))

    def accept(self, tokens):
        return [m.accept(token) for m, token in tokens]

    def fill(self, rows, bitmask):
        self.fills += 1
        bits = bitmask.numpy().view(np.uint32)
        for m, row in rows:
            for i, text in enumerate(self.texts):
                if text and any(c.startswith(m.text + text) for c in m.choices):
                    bits[row, i // 32] |= np.uint32(1 << (i % 32))


class ChoiceMatcher:
    def __init__(self, backend, choices):
        self.backend, self.choices, self.text = backend, choices, ""

    def accept(self, token):
        self.text += self.backend.texts[token]
        return any(c.startswith(self.text) for c in self.choices)

    @property
    def done(self):
        return self.text in self.choices

    error = ""


class ChoicesPlugin:
    made: list[ChoicesBackend] = []

    @hookimpl
    def minisgl_register_grammar_backends(self, register):
        def factory(*args):
            self.made.append(ChoicesBackend(*args))
            return self.made[-1]
        register(GrammarBackendSpec(name="choices", description="regex word choices", factory=factory))


@contextlib.contextmanager
def installed(plugin, name):
    """This process's registry with `plugin` added to what is installed."""
    registry = Registry()
    registry.load_entry_points()
    registry.add_plugin(plugin, name)
    set_registry(registry)
    try:
        yield
    finally:
        set_registry(None)


def test_a_third_partys_grammar_backend_checks_and_masks(tiny_qwen3_path):
    with installed(ChoicesPlugin(), "choices-plugin"):
        with LLM(tiny_qwen3_path, dtype="float32", grammar_backend="choices") as llm:
            outs = llm.generate(["Answer:"] * 4, [SamplingParams(max_new_tokens=8, temperature=1.0, seed=s,
                                                                 regex="(yes|no|maybe)") for s in range(4)])
            assert all(o.text in ("yes", "no", "maybe") and o.finish_reason == "stop" for o in outs), outs
            with pytest.raises(RequestError, match="'json_schema' cannot be compiled: the choices backend takes only"):
                llm.generate(["x"], SamplingParams(json_schema="{}"))
        # the request layer's backend checked, the engine's masked every step
        assert len(ChoicesPlugin.made) == 2 and ChoicesPlugin.made[1].fills >= 2
        with pytest.raises(SelectionError, match="--grammar-backend: unknown grammar backend 'outlines'; "
                                                 "installed: choices, llguidance"):
            LLM(tiny_qwen3_path, grammar_backend="outlines")


class MissingLibraryPlugin:
    @hookimpl
    def minisgl_register_grammar_backends(self, register):
        register(GrammarBackendSpec(name="outlines", description="needs a library this machine lacks",
                                    factory="outlines_that_is_not_installed:Backend"))


def test_a_backend_whose_library_is_missing_is_a_usage_error_that_names_the_flag(tiny_qwen3_path):
    with installed(MissingLibraryPlugin(), "outlines-plugin"):
        with pytest.raises(SelectionError, match="--grammar-backend: No module named 'outlines_that_is_not_installed'"):
            LLM(tiny_qwen3_path, grammar_backend="outlines")


class SlowGrammars(LLGuidance):
    """llguidance whose matchers take a while to compile, as a large schema's would."""

    compiled_at_tokens: list[int] = []  # the free request's tokens when each matcher was ready
    free_tokens = 0

    def matcher(self, field, source):
        time.sleep(0.5)
        SlowGrammars.compiled_at_tokens.append(SlowGrammars.free_tokens)
        return super().matcher(field, source)


class SlowPlugin:
    @hookimpl
    def minisgl_register_grammar_backends(self, register):
        register(GrammarBackendSpec(name="slow", description="slow compiles", factory=SlowGrammars))


def test_grammars_compile_off_the_engine_loop(tiny_qwen3_path):
    with installed(SlowPlugin(), "slow-plugin"):
        with LLM(tiny_qwen3_path, dtype="float32", grammar_backend="slow") as llm:
            engine = llm.engine
            free = llm.frontend.generation("free", [[5, 6, 7]], SamplingParams(max_new_tokens=60, ignore_eos=True))
            params = SamplingParams(max_new_tokens=256, temperature=1.0, seed=0, json_schema=json.dumps(SCHEMA))
            shaped = llm.frontend.generation("json", [[5, 6, 7]], params)
            dropped = llm.frontend.generation("dropped", [[5, 6]], SamplingParams(regex="[ab]+"))
            for gen in (free, shaped, dropped):
                for req in gen.engine_requests():
                    engine.add_request(req)
            engine.abort_request(dropped.samples[0].rid)
            ended = {}
            while engine.has_work():
                for out in engine.step():
                    gen = next(g for g in (free, shaped, dropped) if out.rid in g._by_rid)
                    gen.update(out)
                    if out.finished:
                        ended[gen.rid] = out.finish_reason
                SlowGrammars.free_tokens = len(free.samples[0].token_ids)
        # the free request kept decoding while the grammar compiled; the aborted one ended at once
        assert ended == {"free": "length", "json": "stop", "dropped": "abort"}
        assert SlowGrammars.compiled_at_tokens[0] > 0
        jsonschema.validate(json.loads(shaped.samples[0].text), SCHEMA)
