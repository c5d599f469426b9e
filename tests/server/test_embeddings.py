"""POST /v1/embeddings on the real server (tiny random Llama, float32) through the official
`openai` client: OpenAI's shapes, base64, batches, token-id input, last-token and mean
pooling against transformers' own final hidden states, and 4xx for bad input."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
import torch
from server_process import start_server
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings of a tiny model", "a"]
HIDDEN = 64  # make_tiny_model's hidden size


@pytest.fixture(scope="module")
def last_server(tiny_llama_path, tmp_path_factory):
    srv = start_server(tiny_llama_path, "--backend", "hf", "--dtype", "float32",
                       log_dir=tmp_path_factory.mktemp("server-embed-last"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mean_server(tiny_llama_path, tmp_path_factory):
    # chunks of 8 tokens: a mean adds up over several steps
    srv = start_server(tiny_llama_path, "--backend", "hf", "--dtype", "float32", "--embedding-pooling", "mean",
                       "--no-embedding-normalize", "--max-prefill-length", "8",
                       log_dir=tmp_path_factory.mktemp("server-embed-mean"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def hf(tiny_llama_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama_path)


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def model_id(server) -> str:
    return httpx.get(server.url + "/v1/models").json()["data"][0]["id"]


def final_hidden(hf, text: str) -> tuple[list[int], np.ndarray]:
    model, tokenizer = hf
    ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    return ids, hidden.numpy()


def test_last_token_pooling_is_transformers_final_hidden_state_normalised(last_server, hf):
    response = client(last_server).embeddings.create(model=model_id(last_server), input=TEXTS[0])
    ids, hidden = final_hidden(hf, TEXTS[0])
    (item,) = response.data
    assert response.object == "list" and item.object == "embedding" and item.index == 0
    assert response.model == model_id(last_server)
    assert response.usage.prompt_tokens == response.usage.total_tokens == len(ids)
    got = np.asarray(item.embedding)
    assert got.shape == (HIDDEN,)
    want = hidden[-1] / np.linalg.norm(hidden[-1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_batch_keeps_its_order_and_token_ids_equal_text(last_server, hf):
    c, model = client(last_server), model_id(last_server)
    batch = c.embeddings.create(model=model, input=TEXTS)
    assert [d.index for d in batch.data] == [0, 1, 2]
    singles = [c.embeddings.create(model=model, input=t).data[0].embedding for t in TEXTS]
    ids = [final_hidden(hf, t)[0] for t in TEXTS]
    by_ids = c.embeddings.create(model=model, input=ids)
    one_by_ids = c.embeddings.create(model=model, input=ids[0])
    for i in range(len(TEXTS)):
        np.testing.assert_allclose(batch.data[i].embedding, singles[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(by_ids.data[i].embedding, singles[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one_by_ids.data[0].embedding, singles[0], rtol=1e-5, atol=1e-6)
    assert batch.usage.prompt_tokens == sum(map(len, ids))
    assert not np.allclose(singles[0], singles[1])


def test_base64_is_the_float_list_as_little_endian_float32(last_server):
    body = {"input": TEXTS[:2], "model": model_id(last_server)}
    floats = httpx.post(last_server.url + "/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    encoded = httpx.post(last_server.url + "/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    for f, e in zip(floats["data"], encoded["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(e["embedding"]), dtype="<f4")
        assert decoded.tolist() == f["embedding"]
    # the openai client asks for base64 itself and decodes it
    via_client = client(last_server).embeddings.create(**body)
    assert [d.embedding for d in via_client.data] == [f["embedding"] for f in floats["data"]]
    assert httpx.post(last_server.url + "/v1/embeddings", json={**body, "dimensions": HIDDEN}).status_code == 200


def test_mean_pooling_over_chunks_ignores_a_cached_prefix(mean_server, hf):
    c, model = client(mean_server), model_id(mean_server)
    prefix = "Cached prefix words that a completion puts in the radix cache first"
    c.completions.create(model=model, prompt=prefix, max_tokens=2)
    text = prefix + " and then some more words to embed"
    ids, hidden = final_hidden(hf, text)
    assert len(ids) > 16  # several prefill chunks
    response = c.embeddings.create(model=model, input=text)
    np.testing.assert_allclose(response.data[0].embedding, hidden.mean(0), rtol=1e-4, atol=1e-5)
    metrics = httpx.get(mean_server.url + "/metrics").json()
    assert metrics["prompt_tokens_total"] >= len(ids)


@pytest.mark.parametrize(("body", "field", "status"), [
    ({}, "input", 400),
    ({"input": ""}, "input", 400),
    ({"input": []}, "input", 400),
    ({"input": ["fine", ""]}, "input", 400),
    ({"input": [[]]}, "input", 400),
    ({"input": [-1, 5]}, "input", 400),
    ({"input": 5}, "input", 400),
    ({"input": [{"text": "a"}]}, "input", 400),
    ({"input": "word " * 5000}, "input", 400),
    ({"input": "a", "dimensions": 8}, "dimensions", 400),
    ({"input": "a", "encoding_format": "binary"}, "encoding_format", 400),
    ({"input": "a", "model": "no-such-model"}, "model", 404),
])
def test_bad_input_is_a_4xx_naming_the_field(last_server, body, field, status):
    response = httpx.post(last_server.url + "/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == field, response.text


def test_the_server_still_generates_after_embeddings(last_server):
    c, model = client(last_server), model_id(last_server)
    c.embeddings.create(model=model, input=TEXTS)
    completion = c.completions.create(model=model, prompt=TEXTS[0], max_tokens=3, temperature=0)
    assert completion.usage.completion_tokens == 3
    assert httpx.get(last_server.url + "/metrics").json()["kv_used_tokens"] == 0


def test_the_schema_documents_the_route(last_server):
    paths = httpx.get(last_server.url + "/schema/openapi.json").json()["paths"]
    assert "post" in paths["/v1/embeddings"]
