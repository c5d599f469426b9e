"""Tool calls: the parsers give the same calls however the answer arrives in pieces;
tool_choice follows OpenAI's rules (required and named functions forced by the grammar, so
even a tiny random model calls with arguments that validate); the official openai client
gets OpenAI's shapes from the real server, and streamed deltas reassemble to the
non-stream answer."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jsonschema
import openai
import pytest
from server_process import start_server

from minisgl import LLM, SamplingParams
from minisgl.frontend.errors import RequestError
from minisgl.frontend.tokenizer import Tokenizer, encode_chat
from minisgl.frontend.tool_calls import HERMES, LLAMA3, ToolCall, tool_use

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
CLOCK = {"type": "object", "properties": {"tz": {"enum": ["utc", "cet"]}}, "required": ["tz"],
         "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "the forecast", "parameters": WEATHER,
                                      "strict": True}},
    {"type": "function", "function": {"name": "get_time", "parameters": CLOCK, "strict": True}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]


def parse_in_pieces(parser, text: str, cuts: list[int]) -> tuple[str, list[tuple[str, str]]]:
    content, calls = "", []
    for lo, hi in zip([0, *cuts], [*cuts, len(text)]):
        more, deltas = parser.push(text[lo:hi])
        content += more
        for d in deltas:
            ToolCall.fold(calls, d)
    more, deltas = parser.finish()
    for d in deltas:
        ToolCall.fold(calls, d)
    return content + more, [(c.name, c.arguments) for c in calls]


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris {x}", "days": 2}}\n</tool_call>'


@pytest.mark.parametrize(("fmt", "text", "want"), [
    (HERMES, "Let me look.\n" + CALL + "\n" + CALL.replace("get_weather", "f"),
     ("Let me look.\n", [("get_weather", '{"city": "Paris {x}", "days": 2}'),
                         ("f", '{"city": "Paris {x}", "days": 2}')])),
    (HERMES, "No call, <tool_c is text", ("No call, <tool_c is text", [])),
    (HERMES, '<tool_call>\n{"arguments": {"a": [1]}, "name": "g"}\n</tool_call>', ("", [("g", '{"a": [1]}')])),
    (HERMES, "<tool_call>not json</tool_call> after", ("<tool_call>not json</tool_call> after", [])),
    (HERMES, '<tool_call>\n{"name": "f", "arguments": {"a": [1, 2', ("", [("f", '{"a": [1, 2')])),  # cut by length
    (HERMES, '<tool_call>\n{"name": "f", "arguments": "s"}</tool_call>', ("", [("f", '"s"')])),
    (LLAMA3, '{"name": "f", "parameters": {"x": "a;b"}}; {"name": "g", "parameters": {}}',
     ("", [("f", '{"x": "a;b"}'), ("g", "{}")])),
    (LLAMA3, '{"name": "f", "parameters": {}};{"name": "g", "parameters": {"y": 1}}',
     ("", [("f", "{}"), ("g", '{"y": 1}')])),
    (LLAMA3, 'Hello {"name": "f"}', ('Hello {"name": "f"}', [])),  # bare calls only open the answer
])
def test_every_way_of_cutting_the_answer_gives_the_same_calls(fmt, text, want):
    assert parse_in_pieces(fmt.parser(), text, []) == want
    for cut in range(1, len(text)):
        assert parse_in_pieces(fmt.parser(), text, [cut]) == want, cut
    assert parse_in_pieces(fmt.parser(), text, list(range(1, len(text)))) == want


def test_without_parallel_calls_only_the_first_counts():
    assert parse_in_pieces(HERMES.parser(max_calls=1), CALL + "\n" + CALL, []) == (
        "", [("get_weather", '{"city": "Paris {x}", "days": 2}')])


@pytest.mark.parametrize(("args", "param", "message"), [
    ((None, "auto"), "tool_choice", "'tool_choice' needs 'tools'"),
    ((TOOLS, "auto"), "tools", "needs the server started with a tool-call parser (--tool-call-parser: hermes, llama3, qwen)"),
    ((TOOLS, {"type": "function", "function": {"name": "nope"}}), "tool_choice", "names function 'nope'"),
    ((TOOLS, "sometimes"), "tool_choice", "must be one of none, auto, required"),
    ((TOOLS + TOOLS[:1], "required"), "tools", "two functions are named 'get_weather'"),
    (([{"type": "function", "function": {"description": "no name"}}], "required"), "tools", "tools[0] must be"),
])
def test_tool_choice_rules_name_the_field(args, param, message):
    with pytest.raises(RequestError) as err:
        tool_use(None, *args)
    assert err.value.param == param and message in str(err.value)


def test_none_renders_no_tools_and_the_template_sees_them_otherwise(tiny_qwen3_path):
    assert tool_use(None, TOOLS, "none").tools is None and tool_use(None, TOOLS, "none").parser is None
    assert tool_use(None, None, "none") is None
    tok = Tokenizer(tiny_qwen3_path)
    used = tool_use(HERMES, TOOLS)
    text = tok.decode(encode_chat(tok, CHAT, tools=used.tools).ids)
    assert '"name": "get_weather"' in text and "<tool_call>" in text
    # the assistant's earlier calls (arguments as JSON text, as clients send them) and the tool's answer
    history = [*CHAT, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"}]
    text = tok.decode(encode_chat(tok, history, tools=used.tools).ids)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in text and "18 degrees" in text
    bad = [*history[:1], {**history[1], "tool_calls": [{"id": "c", "type": "function",
                                                        "function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(RequestError, match=r"messages\[1\].tool_calls\[0\].function.arguments is not JSON"):
        encode_chat(tok, bad)


def test_llm_chat_forced_calls_validate_whatever_the_seed(tiny_qwen3_path):
    with LLM(tiny_qwen3_path, dtype="float32") as llm:
        for seed in range(3):
            out = llm.chat(CHAT, SamplingParams(max_new_tokens=200, temperature=1.0, seed=seed), tools=TOOLS,
                           tool_choice="required").outputs[0]
            assert out.finish_reason == "tool_calls" and out.tool_calls, out
            for call in out.tool_calls:
                jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        named = llm.chat(CHAT, SamplingParams(max_new_tokens=200, temperature=1.0, seed=5), tools=TOOLS,
                         tool_choice={"type": "function", "function": {"name": "get_time"}}).outputs[0]
        assert [c.name for c in named.tool_calls] == ["get_time"] and named.text == ""
        assert llm.chat(CHAT, SamplingParams(max_new_tokens=4), tools=TOOLS, tool_choice="none").outputs[0].tool_calls is None


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, "--tool-call-parser", "qwen", log_dir=tmp_path_factory.mktemp("server-tools"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def reassemble(chunks) -> tuple[str, list[dict], str | None]:
    content, calls, finish = "", [], None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                if d.id is not None:  # a call's first delta: id, type and name
                    assert d.index == len(calls) and d.type == "function" and d.function.name
                    calls.append({"name": d.function.name, "arguments": ""})
                calls[d.index]["arguments"] += d.function.arguments or ""
    return content, calls, finish


def test_required_calls_validate_and_stream_as_openai_deltas(client):
    model = client.models.list().data[0].id
    kwargs = dict(model=model, messages=CHAT, tools=TOOLS, tool_choice="required", max_tokens=200, temperature=1.0)
    for seed in range(3):
        r = client.chat.completions.create(seed=seed, **kwargs).choices[0]
        assert r.finish_reason == "tool_calls" and r.message.content is None and r.message.tool_calls
        for call in r.message.tool_calls:
            assert call.type == "function" and call.id.startswith("call_")
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    whole = client.chat.completions.create(seed=11, **kwargs).choices[0]
    content, calls, finish = reassemble(client.chat.completions.create(seed=11, stream=True, **kwargs))
    assert (content, finish) == ("", "tool_calls")
    assert calls == [{"name": c.function.name, "arguments": c.function.arguments} for c in whole.message.tool_calls]


def test_a_named_function_is_the_one_called_once(client):
    model = client.models.list().data[0].id
    r = client.chat.completions.create(model=model, messages=CHAT, tools=TOOLS, max_tokens=200, temperature=1.0, seed=2,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}}).choices[0]
    assert [c.function.name for c in r.message.tool_calls] == ["get_time"]
    jsonschema.validate(json.loads(r.message.tool_calls[0].function.arguments), CLOCK)


def test_auto_parses_what_the_model_writes_and_history_round_trips(client):
    model = client.models.list().data[0].id
    answer = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}\n</tool_call>'
    kwargs = dict(model=model, messages=CHAT, tools=TOOLS, max_tokens=100, temperature=1.0, seed=0,
                  extra_body={"regex": re.escape(answer)})  # the random model writes exactly this
    r = client.chat.completions.create(**kwargs).choices[0]
    assert r.finish_reason == "tool_calls" and r.message.content == "Checking.\n"
    [call] = r.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Oslo", "days": 3})
    assert reassemble(client.chat.completions.create(stream=True, **kwargs)) == (
        "Checking.\n", [{"name": "get_weather", "arguments": call.function.arguments}], "tool_calls")
    # the call and its result go back through the chat template
    history = [*CHAT, r.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny, 18 degrees"}]
    follow = client.chat.completions.create(model=model, messages=history, tools=TOOLS, max_tokens=5, temperature=0)
    first = client.chat.completions.create(model=model, messages=CHAT, tools=TOOLS, max_tokens=5, temperature=0)
    assert follow.usage.prompt_tokens > first.usage.prompt_tokens + 20
    plain = client.chat.completions.create(model=model, messages=CHAT, tools=TOOLS, tool_choice="none", max_tokens=5)
    assert plain.usage.prompt_tokens < first.usage.prompt_tokens  # none: the template lists no tools


@pytest.mark.parametrize(("kwargs", "param", "why"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "not in 'tools'"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format", "give no"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objectx"}}}],
      "tool_choice": "required"}, "tools", "cannot be compiled"),
])
def test_bad_tool_requests_are_400s_naming_the_field(client, kwargs, param, why):
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, **{"tools": TOOLS, **kwargs})
    assert err.value.body["param"] == param and why in err.value.body["message"]


def test_serve_with_an_unknown_tool_parser_exits_with_a_usage_error(tiny_qwen3_path):
    proc = subprocess.run([sys.executable, "-m", "minisgl", "serve", "--model-path", tiny_qwen3_path,
                           "--tool-call-parser", "xml", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--tool-call-parser: unknown tool call parser 'xml'; installed: hermes, llama3, qwen" in proc.stderr
