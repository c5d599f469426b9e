"""`minisgl bench host`: the engine's own work per step, without a model.

The engine (scheduler, prefix cache, sampling tensors, output folding) runs over a runner
that does no model work: each sampled row gets one fixed token at once. What a step then
costs is what the host adds to every real step; with overlap scheduling a GPU waits on the
host whenever this is longer than its forward (a few ms for a small model's decode step,
BENCHMARKS.md). `batch` requests with prompts of `context` tokens decode `tokens`
tokens each; reported: the median step while all of them decode, the request layer's
folding of its outputs (incremental detokenization: on the critical path of `LLM`, in the
server process when served), and both per request.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from minisgl.engine.batch import ForwardBatch, ForwardResult
from minisgl.sampling_params import SamplingParams


class NoModelRunner:
    """A runner without a model: every sampled row gets token `token`, at once."""

    def __init__(self, kv_slots: int, vocab_size: int, max_context_len: int, device: str = "cpu",
                 token: int = 7) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids: list[int] = []
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self._slots = kv_slots
        self._token = token

    def kv_capacity(self) -> int:
        return self._slots

    def forward(self, batch: ForwardBatch) -> ForwardResult:
        rows = 0 if batch.sampling is None else int(batch.sample_indices.shape[0])
        return ForwardResult(next_tokens=torch.full((rows,), self._token, dtype=torch.int64, device=self.device))

    def shutdown(self) -> None:
        pass


@dataclass
class HostSteps:
    batch: int
    engine_ms: list[float]  # Engine.step: scheduling, KV bookkeeping, sampling tensors, outputs
    fold_ms: list[float]  # the request layer folding the step's outputs (detokenizing), as LLM does

    @staticmethod
    def _median(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    @property
    def engine_median(self) -> float:
        return self._median(self.engine_ms)

    @property
    def fold_median(self) -> float:
        return self._median(self.fold_ms)


def measure(settings: dict, batch: int, context: int, tokens: int, sampling: dict, device: str = "cpu") -> HostSteps:
    """Median decode step of `batch` requests through an Engine over NoModelRunner, and the
    request layer's folding of its outputs (the model's tokenizer detokenizes the tokens)."""
    from minisgl.engine.engine import Engine
    from minisgl.frontend.generation import Frontend
    from minisgl.frontend.tokenizer import Tokenizer
    from minisgl.settings import settings_from_kwargs

    s = settings_from_kwargs(**{"max_running_requests": batch, "max_prefill_length": batch * context + 1, **settings})
    tokenizer = Tokenizer(s.model_path)
    runner = NoModelRunner(batch * (context + tokens + 16) + 1024, vocab_size=tokenizer.vocab_size,
                           max_context_len=context + tokens + 16, device=device)
    engine = Engine(s, runner=runner)
    frontend = Frontend(tokenizer, max_context_len=runner.max_context_len, eos_token_ids=[],
                        max_new_tokens_default=tokens)
    try:
        gens = {}
        for i in range(batch):
            ids = [100 + (7 * i + j) % (tokenizer.vocab_size - 200) for j in range(context)]  # no shared prefixes
            gen = frontend.generation(f"host-{i}", [ids], SamplingParams(max_new_tokens=tokens, ignore_eos=True,
                                                                       **sampling))
            for req in gen.engine_requests():
                gens[req.rid] = gen
                engine.add_request(req)
        result = HostSteps(batch, [], [])
        while engine.has_work():
            full = len(engine.scheduler.running) == batch and not engine.scheduler.waiting
            t0 = time.perf_counter()
            outs = engine.step()
            t1 = time.perf_counter()
            for out in outs:
                gens[out.rid].update(out)
            if full:
                result.engine_ms.append((t1 - t0) * 1e3)
                result.fold_ms.append((time.perf_counter() - t1) * 1e3)
        del result.engine_ms[:2], result.fold_ms[:2]  # the first decodes follow the prefill
        return result
    finally:
        engine.shutdown()
