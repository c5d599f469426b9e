"""One large request must not hurt the others: a body over --max-body-bytes is a 413, a
prompt too long for the context is refused before it is tokenized, and meanwhile a short
stream finishes and /health answers."""

from __future__ import annotations

import threading

import httpx
import pytest
from server_process import start_server

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server(tiny_qwen3_path, "--max-body-bytes", str(8 * MiB), log_dir=tmp_path_factory.mktemp("big"))
    yield srv
    srv.stop()


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text[:500]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert len(r.content) < 5000  # the offending value is never echoed back
    return err


def test_a_body_over_the_limit_is_a_413(server):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "a " * (5 * MiB), "max_tokens": 1}, timeout=60)
    _error(r, 413)


def test_huge_prompts_are_refused_while_others_are_served(server):
    results: list[httpx.Response] = []

    def big() -> None:
        for route, body in (("/v1/completions", {"prompt": "a " * (3 * MiB), "max_tokens": 1}),
                            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "b " * (3 * MiB)}]}),
                            ("/generate", {"text": "c " * (3 * MiB)})):
            results.append(httpx.post(server.url + route, json=body, timeout=120))

    thread = threading.Thread(target=big)
    thread.start()
    lines = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    thread.join(180)
    assert len(results) == 3
    for r in results:
        assert _error(r, 400)["code"] == "context_length_exceeded"
