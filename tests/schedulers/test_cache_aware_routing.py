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
