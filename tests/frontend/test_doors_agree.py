"""The request layer's behaviour, through two front doors at once: `minisgl.LLM` in this
process and the real server over HTTP (sglang's /generate for token ids, the official
`openai` client for completions), both on the real smollm2-135m. Each case must give the
same text, token ids, finish reasons and usage through both, because both call the same
request layer."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from minisgl import LLM, SamplingParams
from minisgl.frontend.errors import ErrorKind, RequestError

sys.path.insert(0, str(Path(__file__).parents[1]))
from server_process import start_server

NOVA = 23324  # " Nova" in SmolLM2's vocabulary
GREEDY = {"temperature": 0.0}


# float32 on every CPU: the cases compare draws across batches of different sizes, and bf16
# (auto's choice where the CPU has native bf16) moves logits by tenths between batch shapes
DTYPE = "float32"


@pytest.fixture(scope="module")
def llm(smollm2_path):
    with LLM(smollm2_path, backend="hf", dtype=DTYPE, num_pages=4096) as llm:
        yield llm


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    srv = start_server(smollm2_path, "--backend", "hf", "--dtype", DTYPE, log_dir=tmp_path_factory.mktemp("doors"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def http_generate(server, prompt, **sampling):
    r = httpx.post(server.url + "/generate", json={"text": prompt, "sampling_params": sampling}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    return body if isinstance(body, list) else [body]


def both(llm, server, prompt, **sampling):
    """The same request through both doors: (LLM's outputs, /generate's answers), checked equal."""
    (out,) = llm.generate(prompt, SamplingParams(**sampling))
    answers = http_generate(server, prompt, **sampling)
    assert [o.text for o in out.outputs] == [a["text"] for a in answers]
    assert [o.token_ids for o in out.outputs] == [a["output_ids"] for a in answers]
    assert [o.finish_reason for o in out.outputs] == [a["meta_info"]["finish_reason"]["type"] for a in answers]
    assert out.prompt_tokens == answers[0]["meta_info"]["prompt_tokens"]
    return out, answers


def test_a_stop_tokens_text_is_not_part_of_the_output(llm, server, client, model):
    out, _ = both(llm, server, "Once upon a time", max_new_tokens=12, stop_token_ids=[NOVA], **GREEDY)
    assert out.text == ", the city of"
    assert out.token_ids[-1] == NOVA and out.finish_reason == "stop"
    completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0,
                                           extra_body={"stop_token_ids": [NOVA]})
    assert completion.choices[0].text == ", the city of"
    assert completion.choices[0].finish_reason == "stop"
    # the stop token counts as generated: usage agrees with the engine's token ids
    assert completion.usage.completion_tokens == len(out.token_ids)
    assert completion.usage.prompt_tokens == out.prompt_tokens


def test_logit_bias_forces_or_bans_a_token(llm, server, client, model):
    out, _ = both(llm, server, "Once upon a time", max_new_tokens=3, temperature=0.8, seed=1,
                  logit_bias={NOVA: 100.0})
    assert out.token_ids == [NOVA] * 3 and out.text == " Nova Nova Nova"
    completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=3,
                                           logit_bias={str(NOVA): 100})
    assert completion.choices[0].text == " Nova Nova Nova"
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                          logit_bias={str(NOVA): 100})
    assert chat.choices[0].message.content == " Nova Nova"
    banned, _ = both(llm, server, "Once upon a time", max_new_tokens=12, logit_bias={NOVA: -100.0}, **GREEDY)
    assert NOVA not in banned.token_ids and banned.text.startswith(", the city of")


def test_stop_strings_across_token_boundaries(llm, server):
    plain, _ = both(llm, server, "Once upon a time", max_new_tokens=12, **GREEDY)
    assert plain.text.startswith(", the city of Nova")
    stop = "ty of No"  # starts inside " city" and ends inside " Nova"
    out, _ = both(llm, server, "Once upon a time", max_new_tokens=12, stop=[stop], **GREEDY)
    assert out.text == ", the ci" and out.finish_reason == "stop"


def test_eos_with_special_tokens_shown(llm, server):
    prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                               tokenize=False, add_generation_prompt=True)
    out, _ = both(llm, server, prompt, max_new_tokens=48, skip_special_tokens=False, **GREEDY)
    assert out.finish_reason == "stop" and out.token_ids[-1] in llm.engine.eos_token_ids
    assert "Paris" in out.text and "<|im_end|>" not in out.text


def test_n_with_seeds(llm, server):
    out, answers = both(llm, server, "My favourite food is", max_new_tokens=8, temperature=0.9, seed=7, n=3,
                        ignore_eos=True)
    assert len(out.outputs) == 3 and len({tuple(o.token_ids) for o in out.outputs}) > 1
    # sequence i is the request with seed + i
    (second,) = llm.generate("My favourite food is", SamplingParams(max_new_tokens=8, temperature=0.9, seed=8,
                                                                    ignore_eos=True))
    assert second.token_ids == out.outputs[1].token_ids


def test_logprobs(llm, client, model):
    (out,) = llm.generate("The capital of France is", SamplingParams(max_new_tokens=4, logprobs=True, top_logprobs=2,
                                                                     **GREEDY))
    completion = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4,
                                           temperature=0, logprobs=2)
    lp = completion.choices[0].logprobs
    assert completion.choices[0].text == out.text
    assert lp.token_logprobs == pytest.approx(out.logprobs, abs=1e-4)
    assert [len(t) for t in lp.top_logprobs] == [2] * 4


def test_a_prompt_over_the_context(llm, client, model):
    prompt = "word " * (llm.engine.max_context_len + 10)
    with pytest.raises(RequestError) as info:
        llm.generate(prompt, SamplingParams(max_new_tokens=4))
    assert info.value.kind is ErrorKind.CONTEXT_LENGTH_EXCEEDED
    with pytest.raises(openai.BadRequestError) as http:
        client.completions.create(model=model, prompt=prompt, max_tokens=4)
    assert http.value.code == "context_length_exceeded"
    assert http.value.body["message"] == info.value.message


@pytest.mark.parametrize(("field", "value", "openai_name"), [
    ("top_p", 0.0, "top_p"), ("temperature", -1.0, "temperature"), ("min_new_tokens", 9, "min_tokens"),
    ("seed", 2**64, "seed"), ("logit_bias", {NOVA: 101.0}, "logit_bias"), ("logit_bias", {10**7: 1.0}, "logit_bias"),
])
def test_bad_sampling_values(llm, server, field, value, openai_name):
    sampling = {"max_new_tokens": 4, field: value}
    with pytest.raises(RequestError) as info:
        llm.generate("Hello", SamplingParams(**sampling))
    assert info.value.kind is ErrorKind.INVALID_REQUEST and info.value.param == field
    r = httpx.post(server.url + "/generate", json={"text": "Hello", "sampling_params": sampling}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == field
    body = {"max_tokens": 4, openai_name: value}
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hello", **body}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == openai_name, r.text


def test_a_huge_prompt_is_refused_before_tokenizing(llm, server):
    tok = llm.frontend.tokenizer
    chars = 2 * llm.engine.max_context_len * tok.max_token_chars + 1
    prompt = "a" * chars
    with pytest.raises(RequestError) as info:
        llm.generate(prompt, SamplingParams(max_new_tokens=1))
    assert info.value.kind is ErrorKind.CONTEXT_LENGTH_EXCEEDED and f"{chars} characters" in info.value.message
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_a_request_id_in_use_is_refused_without_touching_the_first(server):
    import threading

    first: dict = {}

    def run_first() -> None:
        r = httpx.post(server.url + "/generate", timeout=120, json={
            "rid": "same-id", "text": "Once upon a time",
            "sampling_params": {"max_new_tokens": 64, "temperature": 0, "ignore_eos": True}})
        first.update(status=r.status_code, body=r.json())

    thread = threading.Thread(target=run_first)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the first one runs
        if httpx.get(server.url + "/metrics", timeout=10).json().get("num_running_reqs"):
            break
        time.sleep(0.02)
    second = httpx.post(server.url + "/generate", timeout=30, json={"rid": "same-id", "text": "Hello"})
    thread.join(120)
    assert second.status_code == 400 and "already in use" in second.json()["error"]["message"]
    assert first["status"] == 200 and len(first["body"]["output_ids"]) == 64
