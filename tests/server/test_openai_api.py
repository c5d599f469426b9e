"""The OpenAI endpoints through the official `openai` client, /generate and /metrics
through httpx, against the real server and engine on a tiny random model."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from server_process import start_server

CHAT = [{"role": "user", "content": "Tell me about the weather today."}]
PROMPT = "The quick brown fox jumps over the lazy dog because"


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path_factory.mktemp("server-openai"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_models_lists_the_served_model(client, server, model):
    models = client.models.list().data
    assert [m.id for m in models] == [model]
    assert client.models.retrieve(model).id == model


def test_chat_non_stream_usage_and_length(client, model):
    r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "chat.completion"
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_stream_matches_non_stream_and_reports_usage(client, model):
    kwargs = dict(model=model, messages=CHAT, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_continuous_usage_stats_put_the_usage_so_far_on_every_chunk(client, model, endpoint):
    options = {"include_usage": True, "continuous_usage_stats": True}
    kwargs = dict(model=model, max_tokens=6, temperature=0, stream=True, extra_body={"ignore_eos": True})
    if endpoint == "chat":
        chunks = list(client.chat.completions.create(messages=CHAT, stream_options=options, **kwargs))
    else:
        chunks = list(client.completions.create(prompt=PROMPT, stream_options=options, **kwargs))
    assert len(chunks) >= 7 and all(c.usage is not None for c in chunks)
    done = [c.usage.completion_tokens for c in chunks]
    assert done == sorted(done) and done[0] <= 1 and done[-1] == 6
    assert len({c.usage.prompt_tokens for c in chunks}) == 1
    assert all(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens for c in chunks)
    assert chunks[-1].choices == [] and chunks[-2].choices[0].finish_reason == "length"
    # without include_usage, continuous_usage_stats alone adds nothing (vLLM's rule)
    alone = list(client.completions.create(prompt=PROMPT, stream_options={"continuous_usage_stats": True}, **kwargs))
    assert all(c.usage is None for c in alone)


def test_completions_stream_and_non_stream(client, model):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6
    stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens


def test_repeated_prompt_reports_cached_tokens(client, model):
    prompt = PROMPT * 8
    client.completions.create(model=model, prompt=prompt, max_tokens=2, temperature=0)
    again = client.completions.create(model=model, prompt=prompt, max_tokens=2, temperature=0)
    assert 0 < again.usage.prompt_tokens_details.cached_tokens <= again.usage.prompt_tokens


def test_stop_string_cuts_the_text(client, model):
    kwargs = dict(model=model, prompt=PROMPT, temperature=0, max_tokens=24, extra_body={"ignore_eos": True})
    text = client.completions.create(**kwargs).choices[0].text
    assert len(text) >= 6
    stop = text[4:6]
    r = client.completions.create(stop=[stop], **kwargs)
    assert r.choices[0].text == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_n_choices_with_a_seed_are_reproducible(client, model):
    kwargs = dict(model=model, messages=CHAT, max_tokens=8, temperature=1.0, n=3, seed=1234)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    streamed = list(client.chat.completions.create(stream=True, **kwargs))
    by_index: dict[int, str] = {}
    for chunk in streamed:
        for c in chunk.choices:
            by_index[c.index] = by_index.get(c.index, "") + (c.delta.content or "")
    assert [by_index[i] for i in range(3)] == [c.message.content for c in first.choices]


def test_completion_n_counts_usage_over_choices(client, model):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=4, n=2, seed=5, extra_body={"ignore_eos": True})
    assert len(r.choices) == 2 and r.usage.completion_tokens == 8


def test_chat_logprobs(client, model):
    r = client.chat.completions.create(model=model, messages=CHAT, max_tokens=5, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 3


def test_completion_logprobs(client, model):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=4, logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(t) <= 2 for t in lp.top_logprobs)


def test_max_completion_tokens_and_extensions(client, model):
    r = client.chat.completions.create(model=model, messages=CHAT, max_completion_tokens=3, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3
    r = client.chat.completions.create(
        model=model, messages=CHAT, max_tokens=12,
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.2, "min_tokens": 6, "stop_token_ids": [3],
                    "chat_template_kwargs": {"enable_thinking": False}},
    )
    assert 6 <= r.usage.completion_tokens <= 12


def test_generate_seed_stream_format(server):
    with httpx.stream("POST", server.url + "/generate", json={"prompt": "Hello from mini-sglang", "stream": True, "max_new_tokens": 8}, timeout=60) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert lines[-1]["event"] == "done"
    assert all("text_delta" in line for line in lines[:-1]) and len(lines) >= 2


def test_generate_sglang_fields_non_stream(server):
    body = {"text": "Hello", "sampling_params": {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}}
    r = httpx.post(server.url + "/generate", json=body, timeout=60)
    assert r.status_code == 200
    out = r.json()
    assert len(out["output_ids"]) == 5 and out["meta_info"]["finish_reason"]["type"] == "length"
    by_ids = httpx.post(server.url + "/generate", json={"input_ids": out["output_ids"], "sampling_params": {"max_new_tokens": 2}}, timeout=60)
    assert by_ids.status_code == 200 and by_ids.json()["meta_info"]["prompt_tokens"] == 5


def test_metrics_json_and_prometheus(server, client, model):
    before = httpx.get(server.url + "/metrics").json()
    client.completions.create(model=model, prompt=PROMPT, max_tokens=3, extra_body={"ignore_eos": True})
    after = httpx.get(server.url + "/metrics").json()
    for key in ("num_running_reqs", "num_waiting_reqs", "kv_total_tokens", "kv_used_tokens", "kv_cached_tokens",
                "prompt_tokens_total", "generation_tokens_total", "cached_tokens_total", "requests_aborted_total",
                "scheduler", "backend", "avg_latency_s", "throughput_tokens_per_s"):
        assert key in after, key
    assert after["generation_tokens_total"] >= before["generation_tokens_total"] + 3
    assert after["scheduler"] == "rr" and after["kv_used_tokens"] == 0
    text = httpx.get(server.url + "/metrics", headers={"Accept": "text/plain"}).text
    assert "minisgl:num_running_reqs" in text and "minisgl:generation_tokens_total" in text
    assert httpx.get(server.url + "/metrics?format=prometheus").text.startswith("# HELP minisgl:")


def test_openapi_schema_lists_the_endpoints(server):
    schema = httpx.get(server.url + "/schema/openapi.json").json()
    for path in ("/generate", "/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"):
        assert path in schema["paths"], path


def test_cli_generate_and_chat_against_the_server(server):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "minisgl", "generate", "Hello from mini-sglang", "--max-new-tokens", "8", "--url", server.url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "chunks in" in out.stderr
    chat = subprocess.run([sys.executable, "-m", "minisgl", "chat", "-v", "--multi-turn", "--max-new-tokens", "4", "--url", server.url],
                          input="hello\nand again\n", capture_output=True, text=True, timeout=120)
    assert chat.returncode == 0, chat.stderr
    assert chat.stderr.count("POST " + server.url + "/v1/chat/completions") == 2
