"""A test-only runner that behaves like an asynchronous GPU runner on the CPU: it wraps the
real backend-hf runner, and the host copies of each step's results hold garbage (-1) until
the scheduler waits on `ready`. Reading tokens before waiting gives wrong tokens, and each
launch records whether the step before it was still unresolved (true overlap). A step with
a grammar mask leaves its sampling for the engine to launch later, as backend-sgl does."""

from __future__ import annotations

from typing import Any

import torch

from minisgl.engine.batch import ForwardBatch, ForwardResult, ModelRunner
from minisgl.engine.sampler import sample


class LazyEvent:
    """Stands in for torch.cuda.Event: `synchronize` is when the host copies land."""

    def __init__(self, host: dict[str, torch.Tensor], device: dict[str, torch.Tensor]) -> None:
        self.host, self.device, self.done = host, device, False

    def synchronize(self) -> None:
        if not self.done:
            for name, t in self.host.items():
                t.copy_(self.device[name])
            self.done = True


class LazyRunner(ModelRunner):
    supports_overlap = True

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.eos_token_ids = inner.eos_token_ids
        self.vocab_size = inner.vocab_size
        self.max_context_len = inner.max_context_len
        self.device = inner.device
        self.forwards = 0
        self.overlapped_launches = 0  # launches while the previous step was unresolved
        self.deferred_samples = 0  # steps whose sampling the engine launched after the forward
        self._last: LazyEvent | None = None

    def kv_capacity(self) -> int:
        return self.inner.kv_capacity()

    def forward(self, batch: ForwardBatch) -> ForwardResult:
        self.forwards += 1
        if self._last is not None and not self._last.done:
            self.overlapped_launches += 1
        sampling = batch.sampling
        if sampling is not None and sampling.vocab_mask is not None:
            # as backend-sgl does while a mask is being filled: the engine launches the sampling later
            logits = self.inner.compute_logits(batch)
            self.deferred_samples += 1
            return ForwardResult(next_tokens=torch.empty(0, dtype=torch.int64),
                                 sample_later=lambda: self._lazy(sample(logits, sampling)))
        return self._lazy(self.inner.forward(batch))

    def _lazy(self, real: ForwardResult) -> ForwardResult:
        names = ("next_tokens", "logprobs", "top_logprob_ids", "top_logprob_values")
        device = {n: getattr(real, n) for n in names if getattr(real, n) is not None}
        host = {n: torch.full_like(t, -1) for n, t in device.items()}
        self._last = LazyEvent(host, device)
        return ForwardResult(
            next_tokens=host["next_tokens"],
            logprobs=host.get("logprobs"),
            top_logprob_ids=host.get("top_logprob_ids"),
            top_logprob_values=host.get("top_logprob_values"),
            ready=self._last,  # type: ignore[arg-type]
            device_next_tokens=real.next_tokens,
        )

    def shutdown(self) -> None:
        self.inner.shutdown()


def make_overlap_engine(model_path: str, **settings: Any):
    from minisgl.engine.engine import Engine
    from minisgl.models import resolve_model
    from minisgl.settings import settings_from_kwargs
    from minisgl_backend_hf.runner import create_runner

    settings.setdefault("dtype", "float32")
    settings.setdefault("backend", "hf")
    s = settings_from_kwargs(model=model_path, **settings)
    return Engine(s, runner=LazyRunner(create_runner(s, resolve_model(s.model_path))))
