"""GET /metrics: engine counters summed over replicas, the server's rolling latency and
throughput, as JSON (the seed's format) or Prometheus text with `minisgl:` names."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
COUNTERS = {"prompt_tokens_total", "generation_tokens_total", "cached_tokens_total", "requests_aborted_total",
            "engine_requests_aborted_total", "requests_total", "requests_rejected_total"}


async def collect_metrics(state: Any) -> dict[str, Any]:
    settings = state.settings
    pool = state.pool
    per_engine: list[dict[str, Any]] = []
    if pool.alive:
        try:
            per_engine = await pool.call_all("metrics", timeout=5.0)
        except Exception as exc:  # metrics must answer even when an engine misbehaves
            log.warning("engine metrics unavailable: %s", exc)
    merged: dict[str, Any] = {key: 0 for key in ENGINE_KEYS}
    for m in per_engine:
        for key, value in m.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            merged[key] = merged.get(key, 0) + value
    merged["engine_requests_aborted_total"] = merged.pop("requests_aborted_total", 0)
    stats = state.stats
    backend = state.info.backend if state.info else settings.backend
    merged.update({
        "requests_aborted_total": stats.requests_aborted_total,
        "requests_total": stats.requests_total,
        "requests_rejected_total": stats.requests_rejected_total,
        "num_inflight": pool.inflight_total,
        "max_inflight_total": settings.max_inflight_total,
        "max_inflight_per_engine": settings.max_inflight_per_engine,
        "scheduler": pool.policy_name,
        "backend": backend,
        "model": state.model_id,
        "dp_size": len(pool.clients),
        "engines_alive": len(pool.alive),
        "ready": state.ready and pool.healthy,
        "uptime_s": state.uptime_s(),
        "metric_window": settings.metric_window,
        **stats.rolling(),
        "engines": per_engine,
    })
    return merged


class _Snapshot:
    """A prometheus_client collector over one metrics dict."""

    def __init__(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics

    def collect(self):
        labels = {"model": str(self.metrics.get("model", "")), "backend": str(self.metrics.get("backend", ""))}
        for key, value in self.metrics.items():
            if isinstance(value, bool):
                value = int(value)
            if not isinstance(value, int | float):
                continue
            if key in COUNTERS:
                base = key[: -len("_total")] if key.endswith("_total") else key
                family = CounterMetricFamily(f"minisgl:{base}", key.replace("_", " "), labels=list(labels))
            else:
                family = GaugeMetricFamily(f"minisgl:{key}", key.replace("_", " "), labels=list(labels))
            family.add_metric(list(labels.values()), value)
            yield family


def prometheus_text(metrics: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry)
