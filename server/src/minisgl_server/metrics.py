"""GET /metrics: each replica's engine counters and the pool's view of it (`replicas`),
their totals at the top level, and the server's rolling latency and throughput; as JSON
(the original mini-sglang's format) or Prometheus text with `minisgl:` names and `replica` and `node`
labels on the per-replica series (the totals have none).

Totals: gauges (running, waiting, KV) sum the live replicas; counters (`*_total`) also
keep what a dead replica had counted, so they never go backwards."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
            "spec_accepted_tokens_total", "spec_verify_steps_total"}


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
            log.warning("engine metrics unavailable: %s", exc)
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
        "replicas": replicas,
    })
    merged.update(speculation_metrics(merged))  # the ratios of the totals, not sums of ratios
    return merged


class _Snapshot:
    """A prometheus_client collector over one metrics dict: one family per key, with a
    sample for the total and one per replica (labels `replica` and `node`: where it runs)."""

    def __init__(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics

    def collect(self):
        base_labels = {"model": str(self.metrics.get("model", "")), "backend": str(self.metrics.get("backend", ""))}
        families: dict[str, Any] = {}

        def add(key: str, value: int | float, replica: str, node: str) -> None:
            family = families.get(key)
            if family is None:
                names = [*base_labels, "replica", "node"]
                if key in COUNTERS:
                    base = key[: -len("_total")] if key.endswith("_total") else key
                    family = CounterMetricFamily(f"minisgl:{base}", key.replace("_", " "), labels=names)
                else:
                    family = GaugeMetricFamily(f"minisgl:{key}", key.replace("_", " "), labels=names)
                families[key] = family
            family.add_metric([*base_labels.values(), replica, node], value)

        for key, value in self.metrics.items():
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, int | float):
                add(key, value, "", "")
        for section in self.metrics.get("replicas", []):
            label, node = str(section.get("index", "")), str(section.get("node", ""))
            for key, value in section.items():
                if key in ("index", "pid"):
                    continue
                if isinstance(value, bool):
                    value = int(value)
                if isinstance(value, int | float):
                    add(key, value, label, node)
        yield from families.values()


def prometheus_text(metrics: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry)
