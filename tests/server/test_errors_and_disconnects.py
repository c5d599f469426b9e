"""Every invalid input gets OpenAI's error body with a 4xx (never a 500, never a dead
server), and clients that go away abort their requests and free their KV."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from server_process import start_server

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path_factory.mktemp("server-errors"))
    yield srv
    srv.stop()


def _post(server, path, body=None, content=None):
    return httpx.post(server.url + path, json=body, content=content, headers={"Content-Type": "application/json"}, timeout=30)


def _assert_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": MSG, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"messages": MSG, "max_tokens": -5}, "max_tokens"),
        ("/v1/chat/completions", {"messages": MSG, "max_completion_tokens": 0}, "max_completion_tokens"),
        ("/v1/chat/completions", {"messages": MSG, "temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {"messages": MSG, "temperature": -1}, "temperature"),
        ("/v1/chat/completions", {"messages": MSG, "top_p": 1.5}, "top_p"),
        ("/v1/chat/completions", {"messages": MSG, "min_p": 2}, "min_p"),
        ("/v1/chat/completions", {"messages": MSG, "repetition_penalty": 0}, "repetition_penalty"),
        ("/v1/chat/completions", {"messages": MSG, "presence_penalty": 5}, "presence_penalty"),
        ("/v1/chat/completions", {"messages": MSG, "n": 0}, "n"),
        ("/v1/chat/completions", {"messages": MSG, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ("/v1/chat/completions", {"messages": MSG, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages"),
        ("/v1/chat/completions", {"messages": "hello"}, "messages"),
        ("/v1/chat/completions", {"messages": MSG, "stop_token_ids": [10**9]}, "stop_token_ids"),
        ("/v1/chat/completions", {}, "messages"),
        ("/v1/chat/completions", {"messages": MSG, "logit_bias": {"5": 150}}, "logit_bias"),
        ("/v1/completions", {"prompt": "hi", "logit_bias": {str(10**9): 5}}, "logit_bias"),
        ("/v1/completions", {"prompt": "hi", "logit_bias": {"-3": 5}}, "logit_bias"),
        ("/generate", {"text": "hi", "sampling_params": {"logit_bias": {"5": -101}}}, "logit_bias"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": [1, -2, 3]}, "prompt"),
        ("/v1/completions", {"prompt": [{"a": 1}]}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "logprobs": 99}, "logprobs"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 10**6}, "max_tokens"),
        ("/v1/completions", {"prompt": list(range(5000))}, "prompt"),
        ("/generate", {"prompt": "hi", "sampling_params": {"max_new_tokens": 0}}, "max_new_tokens"),
        ("/generate", {"prompt": "hi", "input_ids": [1, 2]}, "prompt"),
        ("/generate", {}, "prompt"),
        ("/generate", {"input_ids": [3] * 5000}, "input_ids"),
        ("/generate", {"text": "hi", "sampling_params": {"n": 2, "seed": 2**64 - 1 + 1}}, "seed"),
        ("/generate", {"text": "hi", "rid": "forged\nlog line"}, "rid"),
        ("/v1/completions", {"prompt": ["hi"] * 1025, "max_tokens": 1}, "prompt"),
    ],
)
def test_invalid_input_is_a_400_naming_the_field(server, path, body, param):
    _assert_error(_post(server, path, body), 400, param)


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2", b"null", b"[]", b"42", b'"text"', b"\xff\xfe",
                                     b"[" * 100_000 + b"]" * 100_000])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/generate"])
def test_malformed_bodies_are_400(server, path, content):
    _assert_error(_post(server, path, content=content), 400)


def test_stream_validation_errors_are_plain_400s(server):
    _assert_error(_post(server, "/v1/chat/completions", {"messages": MSG, "stream": True, "max_tokens": 0}), 400, "max_tokens")


def test_unknown_routes_and_models_are_404(server):
    _assert_error(httpx.get(server.url + "/v2/nothing"), 404)
    _assert_error(httpx.post(server.url + "/v1/audio/speech", json={}), 404)
    _assert_error(_post(server, "/v1/chat/completions", {"model": "gpt-9", "messages": MSG}), 404, "model")
    _assert_error(httpx.get(server.url + "/v1/models/gpt-9"), 404, "model")


def test_openai_client_raises_bad_request(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=client.models.list().data[0].id, messages=MSG, max_tokens=0)
    assert info.value.status_code == 400


def test_a_seed_at_the_edge_wraps_and_leaks_nothing(server):
    # n = 2 from the largest seed: the second sequence's seed wraps to 0 instead of failing
    r = _post(server, "/generate", {"text": "hi", "sampling_params": {"n": 2, "seed": 2**64 - 1, "max_new_tokens": 2}})
    assert r.status_code == 200, r.text
    assert httpx.get(server.url + "/metrics", timeout=10).json()["num_inflight"] == 0


def test_an_error_body_never_echoes_a_huge_value(server):
    r = _post(server, "/v1/completions", {"prompt": "hi", "stop": ["x" * 100_000] * 17})
    _assert_error(r, 400, "stop")
    assert len(r.content) < 5000


def test_server_still_serves_after_all_that(server):
    assert httpx.get(server.url + "/health").status_code == 200
    r = _post(server, "/generate", {"prompt": "still alive?", "max_new_tokens": 2})
    assert r.status_code == 200


def _metrics(server):
    return httpx.get(server.url + "/metrics", timeout=30).json()


def _wait_idle(server, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        m = _metrics(server)
        if (m["num_running_reqs"], m["num_waiting_reqs"], m["kv_used_tokens"], m["num_inflight"]) == (0, 0, 0, 0):
            return m
        if time.monotonic() > deadline:
            return m
        time.sleep(0.1)


def test_forty_streaming_clients_that_disconnect_free_everything(server):
    before = _metrics(server)

    async def client(c: httpx.AsyncClient, i: int, path: str) -> int:
        body = {"max_tokens": 4000, "stream": True, "ignore_eos": True}
        if path.endswith("chat/completions"):
            body["messages"] = [{"role": "user", "content": f"story number {i}"}]
        else:
            body["prompt"] = f"story number {i}"
        chunks = 0
        async with c.stream("POST", server.url + path, json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    chunks += 1
                    if chunks >= 3:
                        break  # leaving the block closes the connection mid-stream
        return chunks

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as c:
            paths = ["/v1/chat/completions", "/v1/completions"]
            return await asyncio.gather(*(client(c, i, paths[i % 2]) for i in range(40)))

    assert all(n == 3 for n in asyncio.run(run()))
    after = _wait_idle(server)
    assert after["num_running_reqs"] == 0
    assert after["kv_used_tokens"] == 0
    assert after["num_inflight"] == 0
    assert after["requests_aborted_total"] >= before["requests_aborted_total"] + 40


def test_non_streaming_client_that_disconnects_is_aborted(server):
    before = _metrics(server)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json={"prompt": "a long one", "max_tokens": 4000, "ignore_eos": True}, timeout=1.0)
    time.sleep(1.0)
    after = _wait_idle(server)
    assert after["num_running_reqs"] == 0 and after["kv_used_tokens"] == 0
    assert after["requests_aborted_total"] == before["requests_aborted_total"] + 1
