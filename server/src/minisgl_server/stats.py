"""The server's own counters and rolling windows (METRIC_WINDOW most recent requests)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


@dataclass
class _Sample:
    latency_s: float
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

    def record_request(self, *, latency_s: float, ttft_s: float | None, completion_tokens: int,
                       prompt_tokens: int, cached_tokens: int, aborted: bool) -> None:
        self.requests_total += 1
        self.http_prompt_tokens_total += prompt_tokens
        self.http_completion_tokens_total += completion_tokens
        if not aborted:
            self._samples.append(_Sample(latency_s, ttft_s, completion_tokens))

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
        busy = sum(s.latency_s for s in samples)
        per_request = [s.completion_tokens / s.latency_s for s in samples if s.latency_s > 0]
        return {
            "window_requests": n,
            "avg_latency_s": busy / n,
            "avg_ttft_s": (sum(ttfts) / len(ttfts)) if ttfts else 0.0,
            # mean decode speed one client sees
            "avg_tokens_per_s": (sum(per_request) / len(per_request)) if per_request else 0.0,
            # generated tokens per second of request time over the window
            "throughput_tokens_per_s": tokens / busy if busy > 0 else 0.0,
        }
