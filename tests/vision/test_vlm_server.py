"""Vision-language chat through the real server and the official openai client: images as
data: URLs and http URLs (a local HTTP server), streamed and not, beside text requests in
the same batches; each bad image is a 400 naming the part; text-only models refuse images."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest
from image_server import ImageServer, data_url, png_bytes
from server_process import start_server
from test_vlm_matches_transformers import reference

SETTINGS = {"VLM_MAX_IMAGE_BYTES": "200000", "VLM_IMAGE_HTTP_TIMEOUT_S": "1"}


@pytest.fixture(scope="module")
def images():
    with ImageServer(huge_bytes=1 << 20) as s:
        yield s


@pytest.fixture(scope="module")
def server(tiny_llava_path, tmp_path_factory):
    srv = start_server(tiny_llava_path, "--dtype", "float32", "--backend", "hf", "--max-prefill-length", "24",
                       log_dir=tmp_path_factory.mktemp("server-vlm"), env=SETTINGS)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def ask(client, url: str, text: str = "What is in the picture?", model: str | None = None, **kw):
    content = [{"type": "image_url", "image_url": {"url": url, "detail": "low"}}, {"type": "text", "text": text}]
    model = client.models.list().data[0].id if model is None else model
    return client.chat.completions.create(model=model, temperature=0, max_tokens=8,
                                          messages=[{"role": "user", "content": content}],
                                          extra_body={"ignore_eos": True}, **kw)


def test_a_data_url_answers_what_transformers_answers(client, tiny_llava_path):
    expected = reference(tiny_llava_path, [("image", png_bytes(21)), ("text", "What is in the picture?")])
    r = ask(client, data_url(png_bytes(21)), logprobs=True)
    assert [t.token for t in r.choices[0].logprobs.content]  # the same ids, seen as tokens
    again = ask(client, data_url(png_bytes(21)))
    assert again.choices[0].message.content == r.choices[0].message.content
    assert again.usage.prompt_tokens_details.cached_tokens > 16  # the image's KV came from the cache
    from transformers import AutoTokenizer

    assert r.choices[0].message.content == AutoTokenizer.from_pretrained(tiny_llava_path).decode(
        expected, skip_special_tokens=True)


def test_an_http_url_streams_the_same_text(client, images):
    url = f"{images.url}/img/22.png"
    whole = ask(client, url).choices[0].message.content
    chunks = ask(client, url, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert "/img/22.png" in images.requests


def test_images_and_text_in_the_same_batches(client, tiny_llava_path):
    model = client.models.list().data[0].id

    def text_request():
        return client.chat.completions.create(model=model, temperature=0, max_tokens=8, extra_body={"ignore_eos": True},
                                              messages=[{"role": "user", "content": "Tell me a story."}])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, client, data_url(png_bytes(30 + i)), "Describe it.") for i in range(3)]
        futures.append(pool.submit(text_request))
        answers = [f.result().choices[0].message.content for f in futures]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llava_path)
    for i in range(3):
        expected = reference(tiny_llava_path, [("image", png_bytes(30 + i)), ("text", "Describe it.")])
        assert answers[i] == tok.decode(expected, skip_special_tokens=True)
    assert answers[3] == tok.decode(reference(tiny_llava_path, [("text", "Tell me a story.")]), skip_special_tokens=True)


@pytest.mark.parametrize(("url", "words"), [
    ("data:image/png;base64,%%%", "not valid base64"),
    (data_url(b"this is not an image"), "not an image Pillow can decode"),
    (data_url(png_bytes(1, size=(400, 400))), "VLM_MAX_IMAGE_BYTES"),
    ("file:///etc/hostname", "ALLOW_FILE_IMAGE_URL=1"),
    ("/etc/hostname", "ALLOW_FILE_IMAGE_URL=1"),
    ("gopher://example.com/x.png", "not supported"),
])
def test_bad_images_are_400s_that_name_the_part(client, url, words):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, url)
    message = err.value.body["message"] if isinstance(err.value.body, dict) else str(err.value)
    assert "messages[0].content[0].image_url" in message and words in message, message


def test_bad_http_images_are_400s(client, images):
    for path, words in (("/missing", "HTTP 404"), ("/loop", "redirects"), ("/slow", "VLM_IMAGE_HTTP_TIMEOUT_S"),
                        ("/huge", "VLM_MAX_IMAGE_BYTES")):
        with pytest.raises(openai.BadRequestError, match=words.replace(".", r"\.")):
            ask(client, images.url + path)
    with pytest.raises(openai.BadRequestError, match="detail"):
        client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png_bytes(0)),
                                                                             "detail": "ultra"}}]}])


def test_a_text_model_refuses_images(tiny_qwen3_path, tmp_path):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path)
    try:
        text_client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="takes text only"):
            ask(text_client, data_url(png_bytes(0)))
    finally:
        srv.stop()


def test_a_text_model_and_a_vision_model_side_by_side(tiny_qwen3_path, tiny_llava_path, tmp_path):
    """MODEL_NAME a text model, VLM_MODEL_NAME a vision-language one: an engine each behind one
    server; requests with images go to the VLM, a request's `model` picks either."""
    srv = start_server(tiny_qwen3_path, "--dtype", "float32", log_dir=tmp_path,
                       env={"VLM_MODEL_NAME": tiny_llava_path, "VLM_BACKEND": "hf"})
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        ids = [m.id for m in c.models.list().data]
        assert ids == [tiny_qwen3_path, tiny_llava_path]
        from transformers import AutoTokenizer

        vlm_tok = AutoTokenizer.from_pretrained(tiny_llava_path)
        r = ask(c, data_url(png_bytes(40)), model="")  # no model named: the images decide
        assert r.model == tiny_llava_path
        expected = reference(tiny_llava_path, [("image", png_bytes(40)), ("text", "What is in the picture?")])
        assert r.choices[0].message.content == vlm_tok.decode(expected, skip_special_tokens=True)
        text = [{"role": "user", "content": "Tell me a story."}]
        plain = c.chat.completions.create(model=ids[0], messages=text, max_tokens=4, temperature=0)
        assert plain.model == tiny_qwen3_path
        by_name = c.chat.completions.create(model=ids[1], messages=text, max_tokens=8, temperature=0,
                                            extra_body={"ignore_eos": True})
        assert by_name.choices[0].message.content == vlm_tok.decode(
            reference(tiny_llava_path, [("text", "Tell me a story.")]), skip_special_tokens=True)
        with pytest.raises(openai.BadRequestError, match="takes text only"):
            c.chat.completions.create(model=ids[0], max_tokens=2, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png_bytes(0))}}]}])
        health = httpx.get(srv.url + "/health").json()
        assert health["models"] == ids and len(health["engines"]) == 2
        metrics = httpx.get(srv.url + "/metrics").json()
        assert {r["index"] for r in metrics["replicas"]} == {0, "vision-0"}
    finally:
        srv.stop()
