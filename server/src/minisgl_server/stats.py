"""The server's own counters: requests by how they ended, latency histograms over every
request (Prometheus, with vLLM's buckets), and rolling figures over the METRIC_WINDOW most
recent requests (JSON)."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Histogram

# vLLM's buckets (vllm/v1/metrics/loggers.py), so its dashboards' heatmaps read ours alike
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)


def _histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
    # registry=None: /metrics exports them through its own collector, with the model's labels
    return Histogram(f"minisgl:{name}", doc, buckets=buckets, registry=None)


@dataclass
class _Sample:
    started: float  # time.time() when the request came in
    ended: float
    ttft_s: float | None
    completion_tokens: int


class ServerStats:
    def __init__(self, window: int) -> None:
        self.window = window
        self._samples: deque[_Sample] = deque(maxlen=window)
        self.started_at = time.time()
        self.requests_total = 0
        self.requests_aborted_total = 0  # client disconnects
        self.requests_rejected_total = 0  # 429
        self.http_prompt_tokens_total = 0
        self.http_completion_tokens_total = 0
        self.finished_by_reason: Counter[str] = Counter()  # answers (each of n) by finish reason
        self.histograms = {
            "ttft": _histogram("time_to_first_token_seconds",
                               "Seconds from a request's arrival to its first generated token.", TTFT_BUCKETS),
            "tpot": _histogram("time_per_output_token_seconds",
                               "Mean seconds between a request's output tokens after the first "
                               "((latency - TTFT) / (output tokens - 1)).", TPOT_BUCKETS),
            "itl": _histogram("inter_token_latency_seconds",
                              "Seconds between successive output tokens of one answer, as the server received them.",
                              TPOT_BUCKETS),
            "e2e": _histogram("e2e_request_latency_seconds",
                              "Seconds from a request's arrival to its last token.", REQUEST_BUCKETS),
            "queue": _histogram("request_queue_time_seconds",
                                "Seconds a request waited in the engine's queue before its prefill began.",
                                REQUEST_BUCKETS),
        }

    def record_request(self, *, latency_s: float, ttft_s: float | None, completion_tokens: int,
                       prompt_tokens: int, cached_tokens: int, aborted: bool,
                       finish_reasons: Sequence[str] = (), queue_time_s: float | None = None) -> None:
        """One HTTP request that ended (`finish_reasons`: one per answer; "abort" for those
        the client left before they finished)."""
        self.requests_total += 1
        self.http_prompt_tokens_total += prompt_tokens
        self.http_completion_tokens_total += completion_tokens
        self.finished_by_reason.update(finish_reasons)
        if queue_time_s is not None:
            self.histograms["queue"].observe(max(queue_time_s, 0.0))
        if aborted:
            return
        ended = time.time()
        self._samples.append(_Sample(ended - latency_s, ended, ttft_s, completion_tokens))
        self.histograms["e2e"].observe(latency_s)
        if ttft_s is not None:
            self.histograms["ttft"].observe(ttft_s)
            if completion_tokens > 1:
                self.histograms["tpot"].observe((latency_s - ttft_s) / (completion_tokens - 1))

    def record_tokens_gap(self, gap_s: float, tokens: int) -> None:
        """`tokens` more tokens of one answer, `gap_s` after its previous ones: that many gaps."""
        for _ in range(tokens):
            self.histograms["itl"].observe(gap_s / tokens)

    def record_abort(self) -> None:
        self.requests_aborted_total += 1

    def rolling(self) -> dict[str, float | int]:
        samples = list(self._samples)
        n = len(samples)
        if not n:
            return {"window_requests": 0, "avg_latency_s": 0.0, "avg_ttft_s": 0.0, "avg_tokens_per_s": 0.0,
                    "throughput_tokens_per_s": 0.0}
        ttfts = [s.ttft_s for s in samples if s.ttft_s is not None]
        tokens = sum(s.completion_tokens for s in samples)
        latencies = [s.ended - s.started for s in samples]
        per_request = [s.completion_tokens / lat for s, lat in zip(samples, latencies) if lat > 0]
        # requests overlap: the server's rate is the tokens over the wall time they spanned
        wall = max(s.ended for s in samples) - min(s.started for s in samples)
        return {
            "window_requests": n,
            "avg_latency_s": sum(latencies) / n,
            "avg_ttft_s": (sum(ttfts) / len(ttfts)) if ttfts else 0.0,
            # mean decode speed one client sees
            "avg_tokens_per_s": (sum(per_request) / len(per_request)) if per_request else 0.0,
            # generated tokens per second of wall time, from the window's first arrival to its last finish
            "throughput_tokens_per_s": tokens / wall if wall > 0 else 0.0,
        }
