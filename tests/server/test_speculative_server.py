"""`minisgl serve --speculative-algorithm ngram` through the openai client: greedy answers
and streams equal plain decoding's, and the acceptance shows in /metrics (JSON and
Prometheus)."""

from __future__ import annotations

import httpx
import openai
import pytest
from server_process import start_server

from minisgl import LLM, SamplingParams

LOOP = [1011, 1012, 1013, 1014, 1015, 1016, 1017, 1018] * 6  # a real model goes on repeating it


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    srv = start_server(smollm2_path, "--backend", "hf", "--dtype", "float32", "--speculative-algorithm", "ngram",
                       log_dir=tmp_path_factory.mktemp("server-speculative"))
    yield srv
    srv.stop()


def test_served_drafts_match_plain_decoding(server, smollm2_path):
    with LLM(smollm2_path, dtype="float32", backend="hf") as llm:
        want = llm.generate(LOOP, SamplingParams(temperature=0.0, max_new_tokens=40, ignore_eos=True))[0].text
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    body = dict(model=smollm2_path, prompt=LOOP, max_tokens=40, temperature=0.0, extra_body={"ignore_eos": True})
    assert client.completions.create(**body).choices[0].text == want
    chunks = list(client.completions.create(**body, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert "speculative decoding: ngram" in server.log(tail=None)

    metrics = httpx.get(server.url + "/metrics").json()
    assert metrics["spec_accepted_tokens_total"] > 0 and 0 < metrics["spec_acceptance_rate"] <= 1
    assert metrics["spec_mean_accepted_length"] > 1
    text = httpx.get(server.url + "/metrics", params={"format": "prometheus"}).text
    assert "minisgl:spec_accepted_tokens_total" in text and "minisgl:spec_acceptance_rate" in text


@pytest.fixture(scope="module")
def standalone_server(smollm2_path, tmp_path_factory):
    srv = start_server(smollm2_path, "--backend", "hf", "--dtype", "float32", "--speculative-algorithm", "standalone",
                       "--speculative-draft-model-path", smollm2_path,
                       log_dir=tmp_path_factory.mktemp("server-standalone"))
    yield srv
    srv.stop()


def test_served_draft_model_matches_plain_decoding(standalone_server, smollm2_path):
    """The target itself as the draft model: its drafts are nearly all accepted."""
    with LLM(smollm2_path, dtype="float32", backend="hf") as llm:
        want = llm.generate("The capital of France is", SamplingParams(temperature=0.0, max_new_tokens=24,
                                                                        ignore_eos=True))[0].text
    client = openai.OpenAI(base_url=standalone_server.url + "/v1", api_key="x")
    body = dict(model=smollm2_path, prompt="The capital of France is", max_tokens=24, temperature=0.0,
                extra_body={"ignore_eos": True})
    assert client.completions.create(**body).choices[0].text == want
    chunks = list(client.completions.create(**body, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    log = standalone_server.log(tail=None)
    assert "speculative decoding: standalone" in log and "standalone proposer: draft model" in log
    metrics = httpx.get(standalone_server.url + "/metrics").json()
    assert metrics["spec_draft_tokens_total"] > 0 and metrics["spec_acceptance_rate"] > 0.9
