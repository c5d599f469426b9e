"""The hierarchical cache under tensor parallelism (backend-sgl, `--device cpu --tp-size 2`,
gloo): rank 0 runs the tiers and gathers every rank's heads of a page (tp.py). A prefix
evicted to host comes back token-exact, a restart serves it from disk, and a page file
written under TP=2 is never served to TP=1, whose page has the same shape here (3 KV heads
split 2 + 1). Pool, cache and tier invariants are checked after every step (run_all)."""

from __future__ import annotations

import socket

import pytest
from engine_helpers import GREEDY, prompts, run_all, tokens

from minisgl import SamplingParams
from minisgl.engine.messages import EngineRequest
from minisgl.testing import make_tiny_model

# a pool of 16 pages of 4 tokens: each 40-token conversation evicts the one before
SMALL_POOL = dict(backend="sgl", device="cpu", num_pages=16, page_size=4, max_running_requests=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def uneven_model(tmp_path_factory):
    """6 query and 3 KV heads: rank 0 holds 2 KV heads, rank 1 one."""
    return make_tiny_model(tmp_path_factory.mktemp("tp-tiers"), arch="qwen3", num_heads=6, num_kv_heads=3,
                           hidden_size=96, num_layers=2, seed=4)


def tp_engine(engine_factory, path: str, tp: int = 2, **settings):
    return engine_factory(path, **SMALL_POOL, tp_size=tp, port=free_port() - 1, **settings)


def serve(eng, rid: str, prompt: list[int], n: int = 5):
    eng.add_request(EngineRequest(rid=rid, input_ids=prompt, sampling=SamplingParams(max_new_tokens=n, **GREEDY)))
    outs = run_all(eng)[rid]
    return tokens(outs), outs[-1].cached_tokens


@pytest.mark.parametrize(("heads", "kv_heads", "page_heads"), [(6, 3, 3), (4, 1, 2)], ids=["uneven", "kv-replicated"])
def test_evicted_prefix_comes_back_from_host_under_tp2(engine_factory, tmp_path, heads, kv_heads, page_heads):
    path = make_tiny_model(tmp_path, arch="qwen3", num_heads=heads, num_kv_heads=kv_heads, hidden_size=96,
                           num_layers=2, seed=4)
    plain = tp_engine(engine_factory, path)
    ps = prompts(plain.runner.vocab_size, [40, 40, 40], seed=11)
    off = [serve(plain, f"r{i}", p) for i, p in enumerate(ps + ps[:1])]
    plain.shutdown()
    tiered = tp_engine(engine_factory, path, enable_hierarchical_cache=True, hicache_write_policy="write_back")
    # every rank's heads: 2 of rank 0 and 1 of rank 1, or each rank's copy of the one KV head
    assert tiered.runner.read_kv(list(range(4))).shape[3] == page_heads
    on = [serve(tiered, f"r{i}", p) for i, p in enumerate(ps + ps[:1])]
    assert [t for t, _ in on] == [t for t, _ in off]
    assert off[-1][1] == 0 and on[-1][1] == 36  # recomputed without the tiers, from host with them
    m = tiered.metrics()
    assert m["hicache_host_hit_tokens_total"] == 36 and m["evicted_tokens_total"] > 0


def test_restart_under_tp2_serves_from_disk_and_tp1_never_reads_its_files(engine_factory, uneven_model, tmp_path):
    disk = dict(enable_hierarchical_cache=True, hicache_storage_backend="file", hicache_storage_dir=str(tmp_path))
    first = tp_engine(engine_factory, uneven_model, **disk)
    (p,) = prompts(first.runner.vocab_size, [40], seed=12)
    cold, cached = serve(first, "a", p)
    assert cached == 0
    first.shutdown()  # drains the disk tier's writes
    assert len(list(tmp_path.glob("*.kvpage"))) == 11

    second = tp_engine(engine_factory, uneven_model, **disk)
    warm, cached = serve(second, "a", p)
    assert warm == cold and cached == 36
    assert second.metrics()["hicache_disk_hit_tokens_total"] == 36
    second.shutdown()

    one = tp_engine(engine_factory, uneven_model, tp=1, **disk)
    assert one.scheduler.tiers.disk.fingerprint != second.scheduler.tiers.disk.fingerprint
    out, cached = serve(one, "a", p)
    assert out == cold and cached == 0  # another model's files to TP=1: recomputed, not served
    assert one.metrics()["hicache_disk_hit_tokens_total"] == 0
