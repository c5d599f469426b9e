"""GET /metrics: each replica's engine counters and the pool's view of it (`replicas`),
their totals at the top level, and the server's rolling latency and throughput; as JSON
(the original mini-sglang's format) or Prometheus text.

Totals: gauges (running, waiting, KV) sum the live replicas; counters (`*_total`) also
keep what a dead replica had counted, so they never go backwards.

Prometheus: every family is either per replica (labels `replica` and `node`) or the
server's own (no such labels), never both, so `sum()` over a family counts each thing once;
the JSON's totals are left to PromQL. Names keep the `minisgl:` prefix and, where vLLM has
the metric, vLLM's name after it (num_requests_running, prompt_tokens_total,
time_to_first_token_seconds, request_success_total...): vLLM's dashboards work after
replacing `vllm:` with `minisgl:`, and one server never shows up as two."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from minisgl.cache.tiers import METRICS as TIER_METRICS
from minisgl.engine.speculative import metrics as speculation_metrics

log = logging.getLogger("minisgl.server")

ENGINE_KEYS = (
    "num_running_reqs",
    "num_waiting_reqs",
    "kv_total_tokens",
    "kv_used_tokens",
    "kv_cached_tokens",
    "prompt_tokens_total",
    "generation_tokens_total",
    "cached_tokens_total",
)
# per-replica keys summed into the totals under another name (the server counts its own aborts)
RENAMED = {"requests_aborted_total": "engine_requests_aborted_total"}
COUNTERS = {"prompt_tokens_total", "generation_tokens_total", "cached_tokens_total", "requests_aborted_total",
            "engine_requests_aborted_total", "requests_total", "requests_rejected_total", "requests_dispatched",
            "warmed_tokens", "adaptive_downscaled_total", "cache_hits", "cache_misses", "retractions_total",
            "evicted_tokens_total", "requests_finished_total", "steps_total", "restarts", "spec_draft_tokens_total",
            "spec_accepted_tokens_total", "spec_verify_steps_total"} | {k for k in TIER_METRICS if k.endswith("_total")}


def _numbers(d: dict[str, Any]) -> dict[str, int | float]:
    return {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}


async def collect_metrics(state: Any) -> dict[str, Any]:
    """The server's metrics: engine counters summed over every replica of every served model
    (each replica also on its own; a VLM_MODEL_NAME engine's as replica "vision-<i>")."""
    settings = state.settings
    pools = [m.pool for m in state.models]
    for pool in pools:
        try:
            await pool.refresh_load()
        except Exception as exc:  # metrics must answer even when an engine misbehaves
            log.warning("engine metrics unavailable: %s: %s", type(exc).__name__, exc)
    replicas: list[dict[str, Any]] = []
    merged: dict[str, Any] = {key: 0 for key in ENGINE_KEYS}
    for served in state.models:
        for replica in served.pool.replicas:
            # a dead replica keeps its last counters; its gauges (running, KV...) are gone
            engine = {RENAMED.get(k, k): v for k, v in _numbers(replica.engine_metrics).items()
                      if replica.alive or k in COUNTERS}
            summary = replica.summary()
            if served.role:
                summary["index"] = f"{served.role}-{summary['index']}"
            replicas.append({**engine, **summary})
            for key, value in engine.items():
                merged[key] = merged.get(key, 0) + value
    stats = state.stats
    pool = state.pool
    backend = state.primary.info.backend if state.primary.info else settings.backend
    merged.update({
        "requests_aborted_total": stats.requests_aborted_total,
        "requests_total": stats.requests_total,
        "requests_rejected_total": stats.requests_rejected_total,
        "num_inflight": sum(p.inflight_total for p in pools),
        "max_inflight_total": settings.max_inflight_total,
        "max_inflight_per_engine": settings.max_inflight_per_engine,
        "adaptive_downscaled_total": sum(p.adaptive_downscaled_total for p in pools),
        "warmed_tokens": sum(r.warmed_tokens for p in pools for r in p.replicas),
        "scheduler": pool.policy_name,
        "backend": backend,
        "model": state.model_id,
        "dp_size": len(pool.replicas),
        "engines_alive": sum(len(p.alive) for p in pools),
        "degraded": any(p.degraded for p in pools),
        "ready": state.ready and all(p.healthy for p in pools),
        "uptime_s": state.uptime_s(),
        "metric_window": settings.metric_window,
        **stats.rolling(),
        "requests_by_finish_reason": dict(stats.finished_by_reason),
        "replicas": replicas,
    })
    merged.update(speculation_metrics(merged))  # the ratios of the totals, not sums of ratios
    return merged


# what each family is (keys not named here, from plugins, get their name spelled out)
HELP = {
    "num_running_reqs": "Requests in the engine's running batch.",
    "num_waiting_reqs": "Requests in the engine's queue, not yet admitted.",
    "num_requests_running": "Requests in the engine's running batch (vLLM's name).",
    "num_requests_waiting": "Requests in the engine's queue, not yet admitted (vLLM's name).",
    "kv_cache_usage_perc": "Share of the KV pool held by running requests, 0 to 1 (vLLM's name).",
    "kv_total_tokens": "Token slots in the KV pool.",
    "kv_used_tokens": "KV slots held by running requests.",
    "kv_cached_tokens": "KV slots held by the prefix cache.",
    "kv_free_tokens": "KV slots neither running nor cached.",
    "prompt_tokens_total": "Prompt tokens the engine admitted.",
    "generation_tokens_total": "Tokens the engine generated.",
    "cached_tokens_total": "Prompt tokens read from the prefix cache instead of computed.",
    "prefix_cache_queries_total": "Prompt tokens looked up in the prefix cache (vLLM's name).",
    "prefix_cache_hits_total": "Prompt tokens found in the prefix cache (vLLM's name).",
    "cache_hits": "Admissions that found part of their prompt in the prefix cache.",
    "cache_misses": "Admissions that found none of their prompt in the prefix cache.",
    "retractions_total": "Running requests moved back to the queue to free KV.",
    "evicted_tokens_total": "Prefix-cache tokens evicted to make room.",
    "steps_total": "Engine steps (forward passes) run.",
    "requests_finished_total": "Requests the engine finished.",
    "engine_requests_aborted_total": "Requests the engine aborted (client gone or stop string).",
    "spec_draft_tokens_total": "Speculative draft tokens proposed.",
    "spec_accepted_tokens_total": "Speculative draft tokens accepted.",
    "spec_verify_steps_total": "Speculative verify steps run.",
    "spec_acceptance_rate": "Share of speculative draft tokens accepted.",
    "spec_mean_accepted_length": "Tokens a drafted request gains per verify step.",
    "healthy": "1 while the replica serves.",
    "restarts": "Engine processes started to replace a dead one.",
    "inflight": "HTTP requests in flight on the replica.",
    "max_inflight": "Most HTTP requests in flight on the replica (MAX_INFLIGHT_PER_ENGINE).",
    "requests_dispatched": "HTTP requests the dispatch policy sent to the replica.",
    "warmed_tokens": "Prefix tokens warming put in the replica's cache.",
    "tracked_prefix_tokens": "Prompt tokens the cache-aware policy tracks for the replica.",
    "tracked_tier_tokens": "Prompt tokens the cache-aware policy tracks in the replica's host and disk tiers.",
    "requests_total": "HTTP generation requests that ended.",
    "requests_aborted_total": "HTTP requests whose client left before they finished.",
    "requests_rejected_total": "HTTP requests refused with 429 (in-flight limits).",
    "num_inflight": "HTTP requests in flight on all replicas.",
    "max_inflight_total": "Most HTTP requests in flight on the server (MAX_INFLIGHT_TOTAL, 0: no limit).",
    "max_inflight_per_engine": "Most HTTP requests in flight per replica (MAX_INFLIGHT_PER_ENGINE, 0: no limit).",
    "adaptive_downscaled_total": "Requests whose max_new_tokens ADAPTIVE_MAX_NEW_TOKENS scaled down.",
    "dp_size": "Replicas of the primary model.",
    "engines_alive": "Engine processes alive.",
    "degraded": "1 while some replica is down and others serve.",
    "ready": "1 while the server serves.",
    "uptime_s": "Seconds since the server started.",
    "metric_window": "Requests the rolling figures cover (METRIC_WINDOW).",
    "window_requests": "Requests in the rolling window.",
    "avg_latency_s": "Mean end-to-end seconds of the window's requests.",
    "avg_ttft_s": "Mean seconds to the first token of the window's requests.",
    "avg_tokens_per_s": "Mean output tokens per second one request saw, over the window.",
    "throughput_tokens_per_s": "Output tokens per wall-clock second over the window (first arrival to last finish).",
    **TIER_METRICS,
}
# vLLM's names for what the engine reports under its own
VLLM_ALIASES = {"num_requests_running": "num_running_reqs", "num_requests_waiting": "num_waiting_reqs",
                "prefix_cache_queries_total": "prompt_tokens_total", "prefix_cache_hits_total": "cached_tokens_total"}


def _vllm_names(section: dict[str, Any]) -> dict[str, int | float]:
    out = {alias: section[key] for alias, key in VLLM_ALIASES.items() if key in section}
    if section.get("kv_total_tokens"):
        out["kv_cache_usage_perc"] = section.get("kv_used_tokens", 0) / section["kv_total_tokens"]
    return out


def _numeric(section: dict[str, Any]) -> dict[str, int | float]:
    return {k: int(v) if isinstance(v, bool) else v for k, v in section.items()
            if isinstance(v, int | float) and k not in ("index", "pid")}


class _Snapshot:
    """A prometheus_client collector over one metrics dict and the server's stats: the
    replicas' series (labels `replica` and `node`: where it runs), the server's own
    figures, its latency histograms and its answers by finish reason."""

    def __init__(self, metrics: dict[str, Any], stats: Any) -> None:
        self.metrics = metrics
        self.stats = stats

    def collect(self):
        model = str(self.metrics.get("model", ""))
        # model_name: vLLM's label, which its dashboards select on
        base = {"model": model, "model_name": model, "backend": str(self.metrics.get("backend", ""))}
        families: dict[str, Any] = {}

        def add(key: str, value: int | float, labels: dict[str, str]) -> None:
            family = families.get(key)
            if family is None:
                help_text = HELP.get(key, key.replace("_", " "))
                if key in COUNTERS or key in VLLM_ALIASES and VLLM_ALIASES[key] in COUNTERS:
                    name = key[: -len("_total")] if key.endswith("_total") else key
                    family = CounterMetricFamily(f"minisgl:{name}", help_text, labels=list(labels))
                else:
                    family = GaugeMetricFamily(f"minisgl:{key}", help_text, labels=list(labels))
                families[key] = family
            family.add_metric(list(labels.values()), value)

        per_replica: set[str] = set()
        for section in self.metrics.get("replicas", []):
            labels = {**base, "replica": str(section.get("index", "")), "node": str(section.get("node", ""))}
            numbers = {**_numeric(section), **_vllm_names(section)}
            per_replica.update(numbers)
            for key, value in numbers.items():
                add(key, value, labels)
        for key, value in _numeric(self.metrics).items():
            if key not in per_replica:  # the replicas' totals are sum() in PromQL
                add(key, value, base)
        yield from families.values()

        finished = CounterMetricFamily("minisgl:request_success", "Answers finished (each of a request's n), by "
                                       "finish reason: stop, length, tool_calls, abort (client gone), error.",
                                       labels=[*base, "finished_reason"])
        for reason, count in sorted(self.stats.finished_by_reason.items()):
            finished.add_metric([*base.values(), reason], count)
        yield finished
        for histogram in self.stats.histograms.values():
            for family in histogram.collect():
                family.samples = [s._replace(labels={**base, **s.labels}) for s in family.samples]
                yield family


def prometheus_text(metrics: dict[str, Any], stats: Any) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics, stats))
    return generate_latest(registry)
