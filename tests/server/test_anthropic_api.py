"""POST /v1/messages through the official `anthropic` client against the real server on a
tiny random model: create and stream (the stream's final message is create's), tools
(forced calls validate; `auto` works without --tool-call-parser: the chat template's
markers choose the format), thinking blocks from the reasoning parser, stop_sequences,
and bad inputs answered in Anthropic's error shape with a 4xx."""

from __future__ import annotations

import anthropic
import httpx
import jsonschema
import pytest
from server_process import start_server

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [{"name": "get_weather", "description": "the forecast", "input_schema": WEATHER}]
GREEDY = {"temperature": 0}  # the SDK's own keywords no longer hold the sampling fields the API takes
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path_factory.mktemp("server-anthropic"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(server):
    return httpx.get(server.url + "/v1/models").json()["data"][0]["id"]


def blocks(message) -> list[dict]:
    return [b.model_dump(exclude={"id"}) for b in message.content]  # a call's id is new each time


def same_message(streamed, created) -> None:
    assert blocks(streamed) == blocks(created)
    assert (streamed.stop_reason, streamed.stop_sequence) == (created.stop_reason, created.stop_sequence)
    assert streamed.usage.output_tokens == created.usage.output_tokens


def test_text_create_and_stream_agree(client, model):
    kwargs = dict(model=model, max_tokens=12, messages=ASK, system=[{"type": "text", "text": "Be brief."}],
                  metadata={"user_id": "u-1"}, extra_body={"temperature": 0, "top_k": 5, "top_p": 0.9})
    created = client.messages.create(**kwargs)
    assert created.type == "message" and created.role == "assistant" and created.id.startswith("msg")
    assert created.stop_reason in ("end_turn", "max_tokens") and created.stop_sequence is None
    assert [b.type for b in created.content] == ["text"]
    assert 0 < created.usage.output_tokens <= 12
    assert created.usage.input_tokens + created.usage.cache_read_input_tokens > 10
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        streamed = stream.get_final_message()
    assert text == created.content[0].text
    same_message(streamed, created)
    assert streamed.usage.cache_read_input_tokens > 0  # the second time, the prompt is in the prefix cache


def test_forced_tool_use_create_and_stream_agree(client, model):
    kwargs = dict(model=model, max_tokens=60, messages=ASK, tools=TOOLS, extra_body=GREEDY,
                  tool_choice={"type": "any", "disable_parallel_tool_use": True})
    created = client.messages.create(**kwargs)
    assert created.stop_reason == "tool_use"
    [call] = created.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.id
    jsonschema.validate(call.input, WEATHER)
    with client.messages.stream(**kwargs) as stream:
        events = [e.type for e in stream]
        streamed = stream.get_final_message()
    same_message(streamed, created)
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "input_json" in events and "content_block_stop" in events and "message_delta" in events
    # a named tool is the one called
    named = client.messages.create(**{**kwargs, "tool_choice": {"type": "tool", "name": "get_weather"}})
    assert [b.name for b in named.content] == ["get_weather"]


def test_auto_needs_no_parser_flag_and_history_round_trips(client, model, server):
    assert "tool-call parser 'hermes' chosen" in server.log(None)
    r = client.messages.create(model=model, max_tokens=8, messages=ASK, tools=TOOLS, tool_choice={"type": "auto"})
    assert r.stop_reason in ("end_turn", "max_tokens", "tool_use")
    history = [*ASK, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "I should look.", "signature": ""},
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 18 degrees"},
                                     {"type": "text", "text": "And tomorrow?"}]}]
    follow = client.messages.create(model=model, max_tokens=4, messages=history, tools=TOOLS, extra_body=GREEDY)
    none = client.messages.create(model=model, max_tokens=4, messages=ASK, tools=TOOLS, tool_choice={"type": "none"})
    first = client.messages.create(model=model, max_tokens=4, messages=ASK, tools=TOOLS)

    def prompt(m):
        return m.usage.input_tokens + m.usage.cache_read_input_tokens
    assert prompt(follow) > prompt(first) + 20 and prompt(none) < prompt(first)


def test_stop_sequences_name_the_one_that_matched(client, model):
    kwargs = dict(model=model, max_tokens=24, messages=ASK, extra_body=GREEDY, system="Be brief.")
    full = client.messages.create(**kwargs).content[0].text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    r = client.messages.create(stop_sequences=["never-written", stop], **kwargs)
    assert (r.stop_reason, r.stop_sequence) == ("stop_sequence", stop)
    assert "".join(b.text for b in r.content) == full[:full.find(stop)]
    with client.messages.stream(stop_sequences=[stop], **kwargs) as stream:
        same_message(stream.get_final_message(), r)


@pytest.mark.parametrize(("body", "status", "why"), [
    ({"messages": ASK}, 400, "max_tokens"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, 400, "document"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}, 400, "takes text only"),
    ({"max_tokens": 4, "messages": [{"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]}, 400, "'tool_result' block may not be"),
    ({"max_tokens": 4, "messages": ASK, "tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, 400, "nope"),
    ({"max_tokens": 4, "messages": ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400,
     "server tool"),
    ({"max_tokens": 0, "messages": ASK}, 400, "max_tokens"),
    ({"max_tokens": 4, "messages": ASK, "temperature": -1}, 400, "temperature"),
    ({"max_tokens": 4, "messages": ASK, "model": "claude-nope"}, 404, "claude-nope"),
])
def test_bad_requests_get_anthropic_errors(server, model, body, status, why):
    r = httpx.post(server.url + "/v1/messages", json={"model": model, **body}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["type"] == "error" and why in err["error"]["message"]
    assert err["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_the_client_raises_its_own_errors_and_x_api_key_is_taken(client, server, model):
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model=model, max_tokens=4, messages=[])
    assert err.value.body["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/messages", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["type"] == "error"
    ok = httpx.post(server.url + "/v1/messages", headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
                    json={"model": model, "max_tokens": 2, "messages": ASK}, timeout=60)
    assert ok.status_code == 200 and ok.json()["type"] == "message"


def test_schema_covers_the_route(server):
    doc = httpx.get(server.url + "/schema/openapi.json").json()
    post = doc["paths"]["/v1/messages"]["post"]
    assert {"200", "400", "404", "429"} <= set(post["responses"])


@pytest.fixture(scope="module")
def thinking_server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, "--reasoning-parser", "deepseek-r1",
                       log_dir=tmp_path_factory.mktemp("server-anthropic-thinking"))
    yield srv
    srv.stop()


def test_thinking_blocks_from_the_reasoning_parser(thinking_server):
    client = anthropic.Anthropic(base_url=thinking_server.url, api_key="unused", max_retries=0, timeout=120)
    model = httpx.get(thinking_server.url + "/v1/models").json()["data"][0]["id"]
    kwargs = dict(model=model, max_tokens=10, messages=ASK, extra_body=GREEDY,
                  thinking={"type": "enabled", "budget_tokens": 1024})
    created = client.messages.create(**kwargs)
    assert created.content[0].type == "thinking" and created.content[0].thinking
    with client.messages.stream(**kwargs) as stream:
        kinds = {e.delta.type for e in stream if e.type == "content_block_delta"}
        streamed = stream.get_final_message()
    assert "thinking_delta" in kinds
    same_message(streamed, created)
