"""Each running request's sampling values, kept on the device in its page-table row.

The values fixed for a request's life are written once, when it takes its row; a step
gathers its rows on the device instead of copying every value from the host. What
changes every step (tokens produced) or is rare (penalty history, min_new_tokens stop
masks) comes from the host with the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial

import torch

from .batch import SamplingBatch, to_device
from .request import Req

# SamplingBatch field -> the request's value, one row each
FLOAT_ROWS: dict[str, Callable[[Req], float]] = {
    "temperature": lambda r: r.temperature,
    "top_p": lambda r: r.params.top_p,
    "min_p": lambda r: r.params.min_p,
    "repetition_penalty": lambda r: r.params.repetition_penalty,
    "frequency_penalty": lambda r: r.params.frequency_penalty,
    "presence_penalty": lambda r: r.params.presence_penalty,
}
INT_ROWS: dict[str, Callable[[Req], int]] = {
    "top_k": lambda r: max(r.params.top_k, 0),
    "seeds": lambda r: r.seed,
}


class SamplingRows:
    def __init__(self, rows: int, device: torch.device) -> None:
        self.device = device
        self.floats = torch.zeros(len(FLOAT_ROWS), rows, dtype=torch.float32, device=device)
        self.ints = torch.zeros(len(INT_ROWS), rows, dtype=torch.int64, device=device)
        self._new: list[Req] = []

    def took_row(self, req: Req) -> None:
        self._new.append(req)

    def _write_new(self) -> None:
        new = [r for r in self._new if r.row >= 0]
        self._new = []
        if not new:
            return
        rows = to_device([r.row for r in new], self.device)
        floats = [[value(r) for r in new] for value in FLOAT_ROWS.values()]
        ints = [[value(r) for r in new] for value in INT_ROWS.values()]
        self.floats.index_copy_(1, rows, to_device(floats, self.device, dtype=torch.float32))
        self.ints.index_copy_(1, rows, to_device(ints, self.device))

    def batch(self, reqs: Sequence[Req], vocab_mask: Future[torch.Tensor] | None) -> SamplingBatch:
        """The SamplingBatch of the sampled rows `reqs`, in order."""
        t = partial(to_device, device=self.device)
        self._write_new()
        rows = t([r.row for r in reqs])
        floats, ints = self.floats.index_select(1, rows), self.ints.index_select(1, rows)
        # a drafted request has a row per position: the k-th sits k tokens further on
        ahead = [0] * len(reqs)
        for i in range(1, len(reqs)):
            if reqs[i] is reqs[i - 1]:
                ahead[i] = ahead[i - 1] + 1
        produced = [r.num_output + r.inflight + k for r, k in zip(reqs, ahead)]  # with the tokens in flight
        needs_penalties = any(r.needs_penalties for r in reqs)
        history = None
        if needs_penalties:
            seen = [r.all_ids + r.draft[:k] for r, k in zip(reqs, ahead)]
            width = max(len(ids) for ids in seen)
            history = t([ids + [-1] * (width - len(ids)) for ids in seen])
        under_min = [n < r.params.min_new_tokens for n, r in zip(produced, reqs)]
        min_mask = stop_ids = None
        if any(under_min):
            k = max(1, max(len(r.stop_ids) for r in reqs))
            stop_ids = t([sorted(r.stop_ids) + [-1] * (k - len(r.stop_ids)) for r in reqs])
            min_mask = t(under_min, dtype=torch.bool)
        bias_ids = bias = None
        if any(r.params.logit_bias for r in reqs):  # rare, like stop ids: padded [S, K] from the host
            k = max(len(r.params.logit_bias) for r in reqs)
            bias_ids = t([[*r.params.logit_bias] + [-1] * (k - len(r.params.logit_bias)) for r in reqs])
            bias = t([[*r.params.logit_bias.values()] + [0.0] * (k - len(r.params.logit_bias)) for r in reqs],
                     dtype=torch.float32)
        top_logprobs = max(r.params.top_logprobs for r in reqs)
        sampling = [r for r in reqs if r.temperature > 0]
        return SamplingBatch(
            **dict(zip(FLOAT_ROWS, floats)),
            **dict(zip(INT_ROWS, ints)),
            steps=t(produced),
            history=history,
            min_new_tokens_mask=min_mask,
            stop_token_ids=stop_ids,
            logit_bias_ids=bias_ids,
            logit_bias=bias,
            top_logprobs=top_logprobs,
            want_logprobs=top_logprobs > 0 or any(r.params.logprobs for r in reqs),
            all_greedy=not sampling,
            needs_penalties=needs_penalties,
            top_k_max=max((r.params.top_k for r in sampling), default=0),
            any_top_p=any(r.params.top_p < 1.0 for r in sampling),
            any_min_p=any(r.params.min_p > 0 for r in sampling),
            any_seeded=any(r.seed >= 0 for r in reqs),
            vocab_mask=vocab_mask,
        )
