"""Dispatch over a simulated pool: the pool records each prompt in the chosen replica's
PrefixTracker, the way the EnginePool does. On a shared-prefix workload cache_aware must
find more cached tokens than rr (the end-to-end version measures /metrics instead)."""

from __future__ import annotations

import random

from minisgl.dispatch import DispatchPolicy, PrefixTracker, ReplicaView, RoundRobin
from minisgl.engine.messages import EngineRequest
from minisgl.sampling_params import SamplingParams
from minisgl_schedulers.dispatch import CacheAware


def shared_prefix_workload(groups: int = 4, per_group: int = 6, prefix_len: int = 64) -> list[list[int]]:
    rng = random.Random(0)
    prefixes = [[rng.randrange(1000) for _ in range(prefix_len)] for _ in range(groups)]
    prompts = [p + [rng.randrange(1000) for _ in range(8)] for p in prefixes for _ in range(per_group)]
    rng.shuffle(prompts)
    return prompts


def cached_tokens(policy: DispatchPolicy, prompts: list[list[int]], replicas: int = 2) -> tuple[int, list[int]]:
    trackers = [PrefixTracker(max_tokens=4096) for _ in range(replicas)]
    hits, counts = 0, [0] * replicas
    for n, prompt in enumerate(prompts):
        views = [
            ReplicaView(index=i, inflight=0, max_inflight=0, _prefix_match=t.match_len) for i, t in enumerate(trackers)
        ]
        chosen = policy.choose(EngineRequest(rid=str(n), input_ids=prompt, sampling=SamplingParams()), views)
        hits += trackers[chosen].match_len(prompt)
        trackers[chosen].insert(prompt)
        counts[chosen] += 1
    return hits, counts


def test_cache_aware_finds_more_cached_tokens_than_round_robin():
    prompts = shared_prefix_workload()
    aware, aware_counts = cached_tokens(CacheAware(), prompts)
    rr, _ = cached_tokens(RoundRobin(), prompts)
    # Every group pays its prefix once with cache_aware (4 misses); rr pays it on both replicas.
    assert aware == (len(prompts) - 4) * 64
    assert aware > rr
    assert min(aware_counts) > 0  # new prefixes spread over both replicas


def test_a_prefix_in_a_host_or_disk_tier_counts_at_tier_weight():
    prompt = list(range(100))
    device, tier = PrefixTracker(max_tokens=4096), PrefixTracker(max_tokens=4096)

    def views(device_len: int, tier_len: int) -> list[ReplicaView]:
        device.clear(), tier.clear()
        device.insert(prompt[:device_len])
        tier.insert(prompt[:tier_len])
        return [ReplicaView(index=0, inflight=0, max_inflight=0, _prefix_match=device.match_len),
                ReplicaView(index=1, inflight=0, max_inflight=0, _tier_match=tier.match_len)]

    policy = CacheAware(tier_weight=0.5)
    request = EngineRequest(rid="r", input_ids=prompt, sampling=SamplingParams())
    assert policy.choose(request, views(0, 80)) == 1  # only replica 1 can serve it (from its tier)
    assert policy.choose(request, views(50, 80)) == 0  # 50 on a device beat 80 * 0.5 in a tier
    assert policy.choose(request, views(30, 80)) == 1  # 30 on a device lose to 80 * 0.5 in a tier
    assert CacheAware(tier_weight=0.0).choose(request, views(30, 100)) == 0
