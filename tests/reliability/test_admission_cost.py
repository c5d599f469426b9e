"""Admission by cost: before any work, a request's worst case (its prompts plus n completions
of max_tokens each) must fit the KV pool, and the logprob entries it asks for
(n x max_tokens x (1 + top_logprobs)) MAX_REQUEST_LOGPROBS; beyond either it is a 400 that
names the field to reduce, and nothing reaches the engine."""

from __future__ import annotations

import httpx
import pytest
from server_process import start_server

POOL = 512  # tokens of KV (page size 1)


@pytest.fixture(scope="module")
def url(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, "--num-pages", str(POOL), log_dir=tmp_path_factory.mktemp("cost"),
                       env={"MAX_REQUEST_LOGPROBS": "1000"})
    yield srv.url
    srv.stop()


def post(url: str, path: str, **body) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60)


def chat(url: str, **body) -> httpx.Response:
    return post(url, "/v1/chat/completions", messages=[{"role": "user", "content": "hi"}], **body)


def refused(r: httpx.Response, param: str, code: str | None = None) -> str:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error["message"]


def engine_counts(url: str) -> tuple[int, int]:
    m = httpx.get(url + "/metrics", timeout=30).json()
    return m["prompt_tokens_total"], m["num_running_reqs"]


def test_a_request_whose_worst_case_exceeds_the_kv_pool_is_refused(url):
    before = engine_counts(url)
    message = refused(post(url, "/v1/completions", prompt="hello", n=4, max_tokens=200), "n",
                      "context_length_exceeded")
    assert f"({POOL} tokens)" in message and "KV" in message, message
    refused(post(url, "/v1/completions", prompt="hello", max_tokens=POOL), "max_tokens", "context_length_exceeded")
    refused(chat(url, n=3, max_completion_tokens=200), "n", "context_length_exceeded")
    assert engine_counts(url) == before  # nothing was sent to the engine


def test_a_request_that_fits_the_pool_is_served(url):
    r = post(url, "/v1/completions", prompt="hello", n=2, max_tokens=100, ignore_eos=True)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 200
    r = post(url, "/v1/completions", prompt="hello")  # the default max_tokens is kept within the pool
    assert r.status_code == 200, r.text


def test_logprob_entries_past_the_budget_are_refused(url):
    message = refused(chat(url, max_tokens=100, logprobs=True, top_logprobs=20), "top_logprobs")
    assert "2100 logprob entries" in message and "MAX_REQUEST_LOGPROBS" in message, message
    refused(post(url, "/v1/completions", prompt="hello", max_tokens=200, logprobs=5), "logprobs")
    refused(chat(url, max_tokens=400, n=2, logprobs=True), "n")
    r = chat(url, max_tokens=40, logprobs=True, top_logprobs=20, ignore_eos=True)  # 40 x 21 = 840
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"][0]["logprobs"]["content"]) == 40


def test_top_logprobs_is_at_most_20_as_openai_says(url):
    refused(chat(url, max_tokens=1, logprobs=True, top_logprobs=21), "top_logprobs")
