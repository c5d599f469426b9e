"""A scheduler plugin installed with pip (examples/minisgl-scheduler-example, policy
"least_loaded") picked by `minisgl serve --scheduler least_loaded` in that venv routes the
requests of a real two-replica server."""

from __future__ import annotations

import httpx
import pytest
from example_plugin_venv import build_example_venv, venv_env
from server_process import start_server

LONG = {"prompt": "a very long story", "max_tokens": 4000, "stream": True, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("third-party-policy")
    python = build_example_venv(root)
    srv = start_server(tiny_qwen3_path, "--dp-size", "2", "--scheduler", "least_loaded",
                       log_dir=root, env=venv_env(), python=python)
    yield srv
    srv.stop()


def dispatched(server) -> list[int]:
    return [r["requests_dispatched"] for r in httpx.get(server.url + "/metrics").json()["replicas"]]


def test_the_installed_policy_routes_requests(server):
    assert httpx.get(server.url + "/metrics").json()["scheduler"] == "least_loaded"
    before = dispatched(server)
    with httpx.stream("POST", server.url + "/v1/completions", json=LONG, timeout=60) as stream:
        lines = stream.iter_lines()  # kept referenced: a collected line iterator closes the stream
        assert '"choices"' in next(line for line in lines if line.startswith("data:"))
        busy = next(e["replica"] for e in httpx.get(server.url + "/health").json()["engines"] if e["inflight"])
        for _ in range(3):  # least_loaded: each goes to the replica with nothing in flight
            r = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
            assert r.status_code == 200, r.text
    delta = [a - b for a, b in zip(dispatched(server), before, strict=True)]
    assert delta[busy] == 1 and delta[1 - busy] == 3
