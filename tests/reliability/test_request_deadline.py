"""REQUEST_TIMEOUT: a generation that runs past its deadline ends with 408 request_timeout
(streams: an error event, then [DONE]) and its engine work is aborted, so nothing is held."""

from __future__ import annotations

import httpx
from helpers import LONG, BackgroundStream, sse_data, sse_json, wait_until
from server_process import start_server

DEADLINE = 2.0


def test_a_request_past_its_deadline_is_ended_and_frees_everything(tiny_qwen3_path, tmp_path):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path, env={"REQUEST_TIMEOUT": str(DEADLINE)})
    try:
        url = srv.url
        stream = BackgroundStream(url, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "a long story"}], "max_tokens": LONG, "stream": True,
            "ignore_eos": True})
        r = httpx.post(url + "/v1/completions", json={"prompt": "a long story", "max_tokens": LONG, "ignore_eos": True},
                       timeout=60)
        assert r.status_code == 408, r.text
        error = r.json()["error"]
        assert error["code"] == "request_timeout" and "REQUEST_TIMEOUT" in error["message"], error
        lines = sse_data(stream.join(60))
        assert lines[-1] == "data: [DONE]", lines[-3:]
        assert sse_json(lines[-2])["error"]["code"] == "request_timeout", lines[-2]

        def idle() -> bool:
            m = httpx.get(url + "/metrics", timeout=30).json()
            return m["num_running_reqs"] == 0 and m["kv_used_tokens"] == 0 and m["replicas"][0]["inflight"] == 0
        wait_until(idle, "the engine work aborted and the slots given back", timeout=30)
        r = httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 4}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        srv.stop()
