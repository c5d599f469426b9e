"""POST /v1/responses and the stored responses through the official `openai` client, against
the real server on SmolLM2-135M-Instruct (greedy, so an answer and its stream agree), and
API-key scoping on the tiny model."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from server_process import start_server

QUESTION = "What is the capital of France? Answer in one word."
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
FORCE_WEATHER = {"type": "function", "name": "get_weather"}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp("responses-store") / "responses.sqlite3")


@pytest.fixture(scope="module")
def server(smollm2_path, store_path, tmp_path_factory):
    # float32: two doors' answers are compared token for token, and a request that reuses the
    # other's cached prefix computes it in another order, which bf16 turns into near-ties
    srv = start_server(smollm2_path, "--responses-store", store_path, "--dtype", "float32",
                       log_dir=tmp_path_factory.mktemp("server-resp"))
    yield srv
    srv.stop()


def _client(server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(server):
    return _client(server)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def _comparable(response) -> dict:
    """A response without what differs between two runs of one request (ids, times, the
    prefix cache's hits) or what the stream helper adds (`parsed`, `parsed_arguments`)."""
    body = response.model_dump(exclude={"id", "created_at", "completed_at"})
    body["usage"]["input_tokens_details"].pop("cached_tokens")
    for item in body["output"]:
        item.pop("id", None)
        item.pop("call_id", None)
        item.pop("parsed_arguments", None)
        for part in item.get("content") or []:
            part.pop("parsed", None)
    return body


def _stream(client, **request):
    with client.responses.stream(**request) as stream:
        events = list(stream)
        return events, stream.get_final_response()


@pytest.mark.parametrize("extra", [{}, {"tools": [WEATHER], "tool_choice": FORCE_WEATHER}], ids=["text", "tool"])
def test_create_and_stream_assemble_to_the_same_object(client, model, extra):
    request = dict(model=model, input=QUESTION, temperature=0, max_output_tokens=32, metadata={"case": "x"}, **extra)
    created = client.responses.create(**request)
    assert created.status == "completed" and created.metadata == {"case": "x"}
    assert created.usage.input_tokens > 0 and created.usage.output_tokens > 0
    assert created.usage.total_tokens == created.usage.input_tokens + created.usage.output_tokens
    events, streamed = _stream(client, **request)
    assert _comparable(streamed) == _comparable(created)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == len(streamed.output)
    if extra:
        (call,) = created.output
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments).keys() == {"city"}
        assert "response.function_call_arguments.done" in kinds
        deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert deltas == streamed.output[0].arguments
    else:
        assert created.output_text and created.output[0].type == "message"
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == created.output_text
        assert {"response.content_part.added", "response.output_text.done", "response.content_part.done"} <= set(kinds)


def test_a_repeated_input_reports_cached_tokens(client, model):
    first = client.responses.create(model=model, input=QUESTION + " Please.", max_output_tokens=2, store=False)
    second = client.responses.create(model=model, input=QUESTION + " Please.", max_output_tokens=2, store=False)
    assert first.status == second.status == "incomplete"
    assert first.incomplete_details.reason == "max_output_tokens"
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_function_tool_round_trip_through_previous_response_id(client, model):
    asked = client.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice=FORCE_WEATHER, temperature=0, max_output_tokens=64,
                                    instructions="You are a weather assistant.")
    (call,) = asked.output
    answered = client.responses.create(
        model=model, previous_response_id=asked.id, tools=[WEATHER], temperature=0, max_output_tokens=48,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny and 21 degrees Celsius"}],
        tool_choice="none")
    assert answered.previous_response_id == asked.id and answered.output_text
    assert "21" in answered.output_text  # the tool's output reached the model
    # the earlier turn is in the prompt: more tokens than the first, whose prompt it starts with
    assert answered.usage.input_tokens > asked.usage.input_tokens
    assert answered.usage.input_tokens_details.cached_tokens > 0
    items = client.responses.input_items.list(answered.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == call.call_id and items[1].arguments == call.arguments
    assert items[2].output == "sunny and 21 degrees Celsius"
    newest_first = client.responses.input_items.list(answered.id, limit=2)
    assert [i.type for i in newest_first.data] == ["function_call_output", "function_call"]
    assert newest_first.has_more and newest_first.first_id == items[2].id
    after = client.responses.input_items.list(answered.id, after=newest_first.last_id)
    assert [i.id for i in after.data] == [items[0].id] and not after.has_more


def test_input_items_map_onto_chat_messages(client, model):
    """An explicit conversation (system, assistant text, tool call and output) answers as the
    same conversation sent through chat completions with the same tools."""
    conversation = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "input_text", "text": "What is the weather in Rome?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "rainy, 12 degrees"},
    ]
    response = client.responses.create(model=model, input=conversation, tools=[WEATHER], tool_choice="none",
                                       temperature=0, max_output_tokens=24, store=False)
    chat = client.chat.completions.create(model=model, temperature=0, max_tokens=24, tool_choice="none", messages=[
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "What is the weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rainy, 12 degrees"},
    ], tools=[{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}])
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens


def test_text_format_json_schema_answers_validate(client, model):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "is_capital": {"type": "boolean"}},
              "required": ["city", "is_capital"], "additionalProperties": False}
    fmt = {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}}
    response = client.responses.create(model=model, input="Describe Paris as JSON.", text=fmt, temperature=0,
                                       max_output_tokens=64)
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.type == "json_schema"
    obj = client.responses.create(model=model, input="Describe Paris as JSON.", text={"format": {"type": "json_object"}},
                                  temperature=0, max_output_tokens=64, store=False)
    assert obj.status == "completed" and isinstance(json.loads(obj.output_text), dict)


def test_stored_response_get_delete_and_store_false(client, model):
    kept = client.responses.create(model=model, input=QUESTION, temperature=0, max_output_tokens=8)
    assert client.responses.retrieve(kept.id).model_dump() == kept.model_dump()
    unkept = client.responses.create(model=model, input=QUESTION, temperature=0, max_output_tokens=8, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model=model, input="hi", previous_response_id=unkept.id)
    assert err.value.body["param"] == "previous_response_id"
    deleted = client.responses.delete(kept.id)  # the SDK returns None for DELETE
    assert deleted is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(kept.id)


def test_a_stored_response_survives_a_restart(smollm2_path, store_path, tmp_path_factory):
    first = start_server(smollm2_path, "--responses-store", store_path, log_dir=tmp_path_factory.mktemp("restart-a"))
    try:
        c = _client(first)
        kept = c.responses.create(model=c.models.list().data[0].id, input=QUESTION, temperature=0, max_output_tokens=8)
    finally:
        first.stop()
    second = start_server(smollm2_path, "--responses-store", store_path, log_dir=tmp_path_factory.mktemp("restart-b"))
    try:
        c = _client(second)
        assert c.responses.retrieve(kept.id).model_dump() == kept.model_dump()
        assert [i.type for i in c.responses.input_items.list(kept.id).data] == ["message"]
        follow = c.responses.create(model=kept.model, previous_response_id=kept.id, input="And of Italy?",
                                    temperature=0, max_output_tokens=8)
        items = c.responses.input_items.list(follow.id, order="asc").data
        assert [(i.type, i.role) for i in items] == [("message", "user"), ("message", "assistant"), ("message", "user")]
    finally:
        second.stop()


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"type": "web_search_call", "id": "x"}]}, "input"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input"),
    ({"input": []}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "input"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "mcp"}}, "tool_choice"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "temperature": -1}, "temperature"),
    ({"input": "hi", "metadata": {"k": "v" * 600}}, "metadata"),
])
def test_bad_inputs_are_4xx_in_openai_shape(server, model, body, param):
    answer = httpx.post(server.url + "/v1/responses", json={"model": model, **body}, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_missing_ids_are_404(server):
    for method, path in [("GET", "/v1/responses/resp_nope"), ("DELETE", "/v1/responses/resp_nope"),
                         ("GET", "/v1/responses/resp_nope/input_items")]:
        answer = httpx.request(method, server.url + path, timeout=30)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"


def test_openapi_schema_lists_the_responses_routes(server):
    paths = httpx.get(server.url + "/schema/openapi.json", timeout=30).json()["paths"]
    assert {"post"} <= set(paths["/v1/responses"])
    assert {"get", "delete"} <= set(paths["/v1/responses/{response_id}"])
    assert "404" in paths["/v1/responses/{response_id}"]["get"]["responses"]
    assert "get" in paths["/v1/responses/{response_id}/input_items"]


def test_responses_belong_to_the_api_key_that_made_them(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, "--api-key", "key-a||key-b", "--responses-store", ":memory:",
                       log_dir=tmp_path_factory.mktemp("server-keys"))
    try:
        a, b = _client(srv, "key-a"), _client(srv, "key-b")
        made = a.responses.create(model=a.models.list().data[0].id, input="hello", max_output_tokens=2)
        assert a.responses.retrieve(made.id).id == made.id
        with pytest.raises(openai.NotFoundError):
            b.responses.retrieve(made.id)
        with pytest.raises(openai.NotFoundError):
            b.responses.create(model=made.model, input="hi", previous_response_id=made.id, max_output_tokens=2)
        with pytest.raises(openai.AuthenticationError) as err:
            _client(srv, "key-c").responses.retrieve(made.id)
        assert err.value.body["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200  # probes need no key
        assert httpx.get(srv.url + "/v1/models", timeout=10).status_code == 401
        # Anthropic's clients send the key as x-api-key
        assert httpx.get(srv.url + "/v1/models", headers={"x-api-key": "key-b"}, timeout=10).status_code == 200
        assert httpx.get(srv.url + "/v1/models", headers={"x-api-key": "key-c"}, timeout=10).status_code == 401
    finally:
        srv.stop()
