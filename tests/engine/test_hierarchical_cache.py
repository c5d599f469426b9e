"""The hierarchical cache (--enable-hierarchical-cache): KV pages the pool evicts go to a
host tier and, with --hicache-storage-backend file, to disk; matching prefixes come back
from there token-exact, a restart serves them from disk, and bad files are never served.
Pool, cache and tier invariants are checked after every step (run_all)."""

import pytest
from engine_helpers import GREEDY, prompts, run_all, tokens

from minisgl import SamplingParams
from minisgl.engine.messages import EngineRequest
from minisgl.settings import SettingsError, settings_from_kwargs

# a pool of 16 pages of 4 tokens holds one 40-token conversation and a bit: each new one evicts the last
SMALL_POOL = dict(num_pages=16, page_size=4, max_running_requests=2)


def serve(eng, rid: str, prompt: list[int], n: int = 5):
    eng.add_request(EngineRequest(rid=rid, input_ids=prompt, sampling=SamplingParams(max_new_tokens=n, **GREEDY)))
    outs = run_all(eng)[rid]
    return tokens(outs), outs[-1].cached_tokens


def workload(eng, ps: list[list[int]]) -> list[tuple[list[int], int]]:
    """Each prompt once, in turn (each evicts the one before), then the first again."""
    return [serve(eng, f"r{i}", p) for i, p in enumerate(ps + ps[:1])]


@pytest.mark.parametrize("policy,backend", [("write_back", "hf"), ("write_through", "hf"), ("write_back", "sgl")])
def test_evicted_prefix_comes_back_from_host_token_exact(engine_factory, tiny_qwen3_path, policy, backend):
    on = dict(backend=backend, device="cpu", **SMALL_POOL)
    plain = engine_factory(tiny_qwen3_path, **on)
    tiered = engine_factory(tiny_qwen3_path, **on, enable_hierarchical_cache=True, hicache_write_policy=policy)
    assert tiered.backend_name == backend
    ps = prompts(plain.runner.vocab_size, [40, 40, 40])
    off, on = workload(plain, ps), workload(tiered, ps)
    assert [t for t, _ in on] == [t for t, _ in off]
    assert off[-1][1] == 0  # recomputed without the tiers
    assert on[-1][1] == 36  # all whole pages but the last token's come back from host
    m = tiered.metrics()
    assert m["hicache_host_hit_tokens_total"] == 36 and m["hicache_disk_hit_tokens_total"] == 0
    assert m["hicache_loaded_bytes_total"] > 0 and m["hicache_host_stored_bytes_total"] > 0
    assert m["cached_tokens_total"] == 36 and m["evicted_tokens_total"] > 0


def test_chunked_prefill_and_retraction_with_shared_prefixes(engine_factory, tiny_qwen3_path):
    knobs = dict(num_pages=24, page_size=4, max_running_requests=4, max_prefill_length=16)
    plain = engine_factory(tiny_qwen3_path, **knobs)
    tiered = engine_factory(tiny_qwen3_path, **knobs, enable_hierarchical_cache=True, hicache_write_policy="write_back")
    (system,) = prompts(plain.runner.vocab_size, [24], seed=5)
    tails = prompts(plain.runner.vocab_size, [5, 17, 30, 9, 12, 3], seed=6)
    results = []
    for eng in (plain, tiered):
        got = {}
        for round_ in range(2):  # the second round finds the shared prefix evicted to host (or recomputes it)
            for i, tail in enumerate(tails):
                eng.add_request(EngineRequest(rid=f"{round_}-{i}", input_ids=system + tail,
                                              sampling=SamplingParams(max_new_tokens=12, **GREEDY)))
            got.update({rid: tokens(o) for rid, o in run_all(eng).items()})
        results.append(got)
    assert len(results[0]) == 12 and results[0] == results[1]
    m = tiered.metrics()
    assert m["retractions_total"] > 0 and m["hicache_host_hit_tokens_total"] > 0
    assert m["cached_tokens_total"] > plain.metrics()["cached_tokens_total"]


def test_host_cap_is_honoured(engine_factory, tiny_qwen3_path):
    probe = engine_factory(tiny_qwen3_path, **SMALL_POOL, enable_hierarchical_cache=True)
    page_bytes = probe.runner.read_kv(list(range(4))).nbytes
    cap_pages = 5
    eng = engine_factory(tiny_qwen3_path, **SMALL_POOL, enable_hierarchical_cache=True,
                         hicache_size=cap_pages * page_bytes / 1e9)
    ps = prompts(eng.runner.vocab_size, [40, 40, 40], seed=1)
    outs = workload(eng, ps)
    m = eng.metrics()
    assert m["hicache_host_pages"] <= cap_pages and m["hicache_host_bytes"] <= cap_pages * page_bytes
    # the first prompt's pages were the least recently used: it is recomputed, still right
    assert outs[-1][1] == 0 and outs[-1][0] == outs[0][0]


def test_restart_serves_prefix_from_disk(engine_factory, tiny_qwen3_path, tmp_path):
    disk = dict(enable_hierarchical_cache=True, hicache_storage_backend="file", hicache_storage_dir=str(tmp_path))
    first = engine_factory(tiny_qwen3_path, **SMALL_POOL, **disk)
    (p,) = prompts(first.runner.vocab_size, [40], seed=2)
    cold, cached = serve(first, "a", p)
    assert cached == 0
    assert first.flush_cache() > 0 and first.metrics()["hicache_host_pages"] == 0  # the disk tier stays
    first.shutdown()
    files = sorted(tmp_path.glob("*.kvpage"))
    # 40 prompt tokens and the 4 output tokens fed back (the 5th never ran): 11 pages, written
    # as the request finished (write_through)
    assert len(files) == 11

    second = engine_factory(tiny_qwen3_path, **SMALL_POOL, **disk)
    warm, cached = serve(second, "a", p)
    assert warm == cold and cached == 36
    m = second.metrics()
    assert m["hicache_disk_hit_tokens_total"] == 36 and m["hicache_disk_read_bytes_total"] > 0


def test_corrupt_and_foreign_files_are_not_served(engine_factory, tiny_qwen3_path, tmp_path):
    disk = dict(enable_hierarchical_cache=True, hicache_storage_backend="file", hicache_storage_dir=str(tmp_path))
    first = engine_factory(tiny_qwen3_path, **SMALL_POOL, **disk)
    (p,) = prompts(first.runner.vocab_size, [40], seed=3)
    cold, _ = serve(first, "a", p)
    first.shutdown()
    keys = first.scheduler.tiers.disk
    from minisgl.cache.tiers import page_keys

    names = [keys.dir / keys._name(k) for k in page_keys(p, 4)]
    # page 3: flipped payload byte; page 0 of a second run: another model's file in its place
    blob = bytearray(names[3].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    names[3].write_bytes(bytes(blob))
    second = engine_factory(tiny_qwen3_path, **SMALL_POOL, **disk)
    out, cached = serve(second, "a", p)
    assert out == cold and cached == 12  # pages 0-2 from disk, the corrupt page 3 and the rest recomputed
    assert second.metrics()["hicache_disk_rejected_total"] == 1
    second.shutdown()

    # a page written for another fingerprint (another model, dtype or page size) under this name
    other = engine_factory(tiny_qwen3_path, **SMALL_POOL, **disk, dtype="bfloat16")
    serve(other, "b", p)
    other_disk = other.scheduler.tiers.disk
    assert other_disk.drain(timeout=30)
    assert other_disk.fingerprint != keys.fingerprint
    foreign = (other_disk.dir / other_disk._name(page_keys(p, 4)[0])).read_bytes()
    names[0].write_bytes(foreign)
    third = engine_factory(tiny_qwen3_path, **SMALL_POOL, **disk)
    out, cached = serve(third, "c", p)
    assert out == cold and cached == 0
    assert third.metrics()["hicache_disk_rejected_total"] == 1


def test_disk_cap_is_honoured(engine_factory, tiny_qwen3_path, tmp_path):
    probe = engine_factory(tiny_qwen3_path, **SMALL_POOL, enable_hierarchical_cache=True, hicache_storage_backend="file",
                           hicache_storage_dir=str(tmp_path / "probe"))
    serve(probe, "a", prompts(probe.runner.vocab_size, [8])[0])
    assert probe.scheduler.tiers.disk.drain(timeout=30)
    file_bytes = max(f.stat().st_size for f in (tmp_path / "probe").glob("*.kvpage"))
    cap = 6 * file_bytes
    eng = engine_factory(tiny_qwen3_path, **SMALL_POOL, enable_hierarchical_cache=True, hicache_storage_backend="file",
                         hicache_storage_dir=str(tmp_path / "capped"), hicache_storage_size=cap / 1e9)
    for i, p in enumerate(prompts(eng.runner.vocab_size, [40, 40], seed=4)):
        serve(eng, f"r{i}", p)
    assert eng.scheduler.tiers.disk.drain(timeout=30)  # the writer thread's files, all in place
    used = sum(f.stat().st_size for f in (tmp_path / "capped").glob("*.kvpage"))
    assert 0 < used <= cap and eng.metrics()["hicache_disk_bytes"] == used


def test_two_servers_sharing_a_directory(engine_factory, tiny_qwen3_path, tmp_path):
    disk = dict(enable_hierarchical_cache=True, hicache_storage_backend="file", hicache_storage_dir=str(tmp_path))
    a = engine_factory(tiny_qwen3_path, **SMALL_POOL, **disk)
    b = engine_factory(tiny_qwen3_path, **SMALL_POOL, **disk)
    (p,) = prompts(a.runner.vocab_size, [40], seed=7)
    # both write the same pages; each sees the other's files whole
    out_a, _ = serve(a, "a", p)
    assert a.scheduler.tiers.disk.drain(timeout=30)  # b sees a's pages once a's writer has written them
    out_b, cached_b = serve(b, "b", p)
    assert out_a == out_b and cached_b == 36 and b.metrics()["hicache_disk_hit_tokens_total"] == 36
    assert not list(tmp_path.glob(".tmp-*"))


def test_disk_tier_rejects_truncated_files_and_evicts_least_recently_used(tmp_path):
    import torch

    from minisgl.cache.disk_tier import DiskTier

    page = torch.arange(24, dtype=torch.float32).view(4, 6)
    tier = DiskTier(str(tmp_path), 1 << 20, "f" * 64, torch.float32, (4, 6))
    assert tier.put("k0", page) and tier.drain()
    size = tier.written_bytes
    assert size > 0 and torch.equal(tier.get("k0"), page)
    path = tmp_path / tier._name("k0")
    path.write_bytes(path.read_bytes()[:-5])
    assert tier.get("k0") is None and tier.rejected == 1 and not path.exists()
    tier.check()

    small = DiskTier(str(tmp_path / "small"), 2 * size, "f" * 64, torch.float32, (4, 6))
    small.put("k1", page)
    small.put("k2", page)
    small.drain()
    small.get("k1")  # k2 is now the least recently used
    small.put("k3", page)
    small.drain()
    assert "k1" in small and "k3" in small and "k2" not in small and small.nbytes == 2 * size
    small.check()


def test_settings_refuse_what_has_no_implementation():
    with pytest.raises(SettingsError, match="hicache_storage_backend"):
        settings_from_kwargs(hicache_storage_backend="mooncake", enable_hierarchical_cache=True)
    with pytest.raises(SettingsError, match="needs --enable-hierarchical-cache"):
        settings_from_kwargs(hicache_storage_backend="file", hicache_storage_dir="/tmp/x")
    with pytest.raises(SettingsError, match="needs --hicache-storage-dir"):
        settings_from_kwargs(hicache_storage_backend="file", enable_hierarchical_cache=True)
    with pytest.raises(SettingsError, match="radix"):
        settings_from_kwargs(enable_hierarchical_cache=True, cache_type="naive")
    with pytest.raises(SettingsError, match="hicache_ratio"):
        settings_from_kwargs(hicache_ratio=3.0)
    with pytest.raises(SettingsError, match="hicache_write_policy"):
        settings_from_kwargs(hicache_write_policy="write_through_selective")
