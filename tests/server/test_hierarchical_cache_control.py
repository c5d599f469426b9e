"""`minisgl control` over the hierarchical cache of a real server, over real ZeroMQ sockets:
`flush_cache --tier device|host|disk|all` empties the tier it names and no other (what a
later request finds cached says so), `cache_stats` reports each tier's pages, bytes, hit
tokens and hit rate per replica; and with two replicas behind the cache_aware router, a
prefix that only one replica's host tier holds is routed to that replica."""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import pytest
from server_process import start_server_with_control

from minisgl.control.client import ControlClient

PROMPT = list(range(100, 140))  # 40 token ids: 9 whole pages of 4 before the last token's page
TIERS = ("--backend", "hf", "--dtype", "float32", "--page-size", "4", "--enable-hierarchical-cache")


def _cached(server, prompt: list[int]) -> int:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    out = client.completions.create(model="m", prompt=prompt, max_tokens=2, temperature=0.0,
                                    extra_body={"ignore_eos": True})
    details = out.usage.prompt_tokens_details
    return details.cached_tokens if details is not None else 0


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hicache-control")
    srv = start_server_with_control(tiny_qwen3_path, *TIERS, "--served-model-name", "m",
                                    "--hicache-storage-backend", "file", "--hicache-storage-dir", str(tmp / "kv"),
                                    log_dir=tmp)
    yield srv
    srv.stop()


def test_flush_each_tier_and_read_its_stats(server):
    with ControlClient(server.endpoint, timeout=60) as control:
        assert _cached(server, PROMPT) == 0
        (stats,) = control.call("cache_stats")["replicas"]
        assert stats["replica"] == 0 and stats["model"] == "m"
        for tier in ("device", "host", "disk"):
            assert stats[tier]["pages"] > 0 and stats[tier]["bytes"] > 0 and stats[tier]["hit_tokens"] == 0

        # the device forgets, the host tier serves
        dropped = control.call("flush_cache", tier="device")
        assert dropped["flushed_tokens"] > 0 and "host_pages" not in dropped and "disk_pages" not in dropped
        assert _cached(server, PROMPT) == 36
        (stats,) = control.call("cache_stats")["replicas"]
        assert stats["host"]["hit_tokens"] == 36 and stats["device"]["hit_tokens"] == 0
        assert stats["host"]["hit_rate"] == pytest.approx(36 / stats["prompt_tokens"], abs=1e-4)

        # device and host forget (the default), the disk tier serves
        dropped = control.call("flush_cache")
        assert dropped["tier"] == "device+host" and dropped["flushed_tokens"] > 0 and dropped["host_pages"] > 0
        assert control.call("cache_stats")["replicas"][0]["host"]["pages"] == 0
        assert _cached(server, PROMPT) == 36
        assert control.call("cache_stats")["replicas"][0]["disk"]["hit_tokens"] == 36

        # the host tier alone, from the CLI: the device still holds the prefix
        out = subprocess.run([sys.executable, "-m", "minisgl", "control", "--endpoint", server.endpoint,
                              "flush_cache", "--tier", "host"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["host_pages"] > 0 and json.loads(out.stdout)["flushed_tokens"] == 0
        assert _cached(server, PROMPT) == 36
        (stats,) = control.call("cache_stats")["replicas"]
        # served from the device; nothing new to write through, so the host tier stays empty
        assert stats["device"]["hit_tokens"] == 36 and stats["host"]["pages"] == 0

        # every tier forgets: computed again
        dropped = control.call("flush_cache", tier="all")
        assert dropped["disk_pages"] > 0 and dropped["host_pages"] == 0 and dropped["flushed_tokens"] > 0
        assert _cached(server, PROMPT) == 0
        bad = subprocess.run([sys.executable, "-m", "minisgl", "control", "--endpoint", server.endpoint,
                              "flush_cache", "--tier", "gpu"], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "'tier'" in bad.stderr


def test_router_sends_a_prefix_to_the_replica_whose_host_tier_holds_it(tiny_qwen3_path, tmp_path):
    srv = start_server_with_control(tiny_qwen3_path, *TIERS, "--served-model-name", "m", "--dp-size", "2",
                                    "--scheduler", "cache_aware", log_dir=tmp_path)
    try:
        with ControlClient(srv.endpoint, timeout=60) as control:
            prompts = [PROMPT, list(range(300, 340))]
            for p in prompts:
                assert _cached(srv, p) == 0
            stats = control.call("cache_stats")["replicas"]
            holder = {}
            for i, p in enumerate(prompts):
                # each prompt went to one replica (cache_aware spreads new prefixes): find which
                control.call("flush_cache", tier="device")
                before = [r["host"]["hit_tokens"] for r in control.call("cache_stats")["replicas"]]
                assert _cached(srv, p) == 36
                after = [r["host"]["hit_tokens"] for r in control.call("cache_stats")["replicas"]]
                (holder[i],) = [r for r in range(2) if after[r] > before[r]]
            assert sorted(holder.values()) == [0, 1], stats
            # over and over, in an order that taking turns would not match: only the holder's
            # host tier has the prompt, and the router knows
            for i in (0, 0, 1, 1, 1, 0):
                control.call("flush_cache", tier="device")
                before = control.call("cache_stats")["replicas"][holder[i]]["host"]["hit_tokens"]
                assert _cached(srv, prompts[i]) == 36
                assert control.call("cache_stats")["replicas"][holder[i]]["host"]["hit_tokens"] == before + 36
    finally:
        srv.stop()
