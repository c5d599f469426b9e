"""--num-tokenizer N: prompts are tokenized in N worker processes; answers and errors are
the same as with tokenization in the server process."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from server_process import start_server

CHAT = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def servers(tiny_qwen3_path, tmp_path_factory):
    logs = tmp_path_factory.mktemp("tokenizer-workers")
    started = [start_server(tiny_qwen3_path, "--num-tokenizer", str(n), log_dir=logs) for n in (0, 2)]
    yield started
    for srv in started:
        srv.stop()


def test_workers_answer_as_the_server_process_does(servers):
    in_process, workers = servers
    assert "2 tokenizer worker process(es) ready" in workers.log()
    for route, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": ["one", "two"], "max_tokens": 4,
                                                                              "temperature": 0})):
        a, b = (httpx.post(s.url + route, json=body, timeout=60).json() for s in (in_process, workers))
        assert [c.get("text") or c["message"]["content"] for c in a["choices"]] == \
               [c.get("text") or c["message"]["content"] for c in b["choices"]]
        assert a["usage"] == b["usage"]


def test_an_error_raised_in_a_worker_is_a_400_naming_the_field(servers):
    _, workers = servers
    r = httpx.post(workers.url + "/v1/completions", json={"prompt": [[1, 2, 10**9]], "max_tokens": 2}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(workers.url + "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]}, timeout=30)
    assert r.status_code == 400 and "role" in r.json()["error"]["message"]
