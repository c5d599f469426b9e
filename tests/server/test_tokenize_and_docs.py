"""POST /tokenize, POST /detokenize and GET /version in vLLM's shapes, and the /schema page
without a network, on the real server with a tiny random model."""

from __future__ import annotations

import re

import httpx
import pytest
from server_process import start_server
from transformers import AutoTokenizer

from minisgl import __version__

CHAT = [{"role": "user", "content": "Tell me about the weather today."}]


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path_factory.mktemp("server-tokenize"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_qwen3_path):
    return AutoTokenizer.from_pretrained(tiny_qwen3_path)


def test_tokenize_a_prompt_and_detokenize_it_back(server, hf_tokenizer):
    text = "The quick brown fox jumps over the lazy dog"
    body = httpx.post(server.url + "/tokenize", json={"prompt": text}).json()
    assert body["tokens"] == hf_tokenizer(text)["input_ids"] and body["count"] == len(body["tokens"])
    max_len = httpx.get(server.url + "/v1/models").json()["data"][0]["max_model_len"]
    assert body["max_model_len"] == max_len > 0
    back = httpx.post(server.url + "/detokenize", json={"tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": text}
    strs = httpx.post(server.url + "/tokenize", json={"prompt": text, "return_token_strs": True}).json()["token_strs"]
    assert "".join(strs) == text


def test_tokenize_messages_counts_what_a_chat_completion_runs(server, hf_tokenizer):
    body = httpx.post(server.url + "/tokenize", json={"messages": CHAT}).json()
    rendered = hf_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert body["tokens"] == hf_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    chat = httpx.post(server.url + "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 1}).json()
    assert chat["usage"]["prompt_tokens"] == body["count"]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": CHAT}, "prompt"),
    ("/tokenize", {"messages": CHAT, "add_special_tokens": True}, "add_special_tokens"),
    ("/tokenize", {"prompt": "a", "model": "no-such-model"}, "model"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])
def test_bad_input_is_a_4xx_naming_the_field(server, path, body, field):
    response = httpx.post(server.url + path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert field in response.text


def test_version(server):
    assert httpx.get(server.url + "/version").json() == {"version": __version__}


def test_schema_page_needs_no_network(server):
    page = httpx.get(server.url + "/schema")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "/v1/chat/completions" in html and "/tokenize" in html and "ChatCompletionRequest" in html
    # nothing the browser would fetch from elsewhere: no scripts, styles or images by URL
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), html[:2000]
    assert "<script" not in html
    doc = httpx.get(server.url + "/schema/openapi.json").json()
    assert {"/tokenize", "/detokenize", "/version"} <= set(doc["paths"])
