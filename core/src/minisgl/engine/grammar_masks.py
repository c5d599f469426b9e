"""Grammar masks for structured outputs: which tokens each constrained row may sample.

A step's bitmask is filled by the grammar backend on a worker thread while the forward
runs (the sampler waits for it). Rows without a grammar allow everything. Under overlap
the matchers still lack step N's tokens when step N+1 is built: the worker waits for them,
feeds them, then fills, so the device runs step N+1's forward meanwhile and the engine
processes step N once they are fed (a runner may leave the sampling for after that,
ForwardResult.sample_later). Each output token reaches its matcher exactly once: from the
worker under overlap, else from `feed` when the step is processed.

Under speculative decoding a request's drafts are cut to the longest prefix its grammar
allows (`allowed_drafts`), and each of its verify rows gets the mask of the state after the
drafts before it; the matcher is left where it was, and is fed the tokens the step emits
one at a time.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch

from ..grammar import GrammarBackend
from .request import Req

if TYPE_CHECKING:
    from .step_builder import ScheduledBatch


class GrammarMasks:
    def __init__(self, vocab_size: int, device: torch.device, forward_on_host: bool) -> None:
        self.words = -(-vocab_size // 32)
        self.device = device
        # a forward on the host's cores takes all of them and a fill beside it only contends
        # with it: there the mask is filled before the forward, unless it must wait for step N
        self.forward_on_host = forward_on_host
        self.backend: GrammarBackend | None = None  # set with the first constrained request
        self._worker: ThreadPoolExecutor | None = None
        self._fed: Future[None] | None = None  # the worker's feed of step N's tokens

    def mask(self, rows: list[tuple[Req, int]], num_rows: int, previous: ScheduledBatch | None) -> Future[torch.Tensor]:
        """The bitmask of a step whose constrained requests sit at `rows` (req, row)."""
        backend = self.backend
        assert backend is not None, "requests with grammars need GrammarMasks.backend"
        pinned = self.device.type == "cuda"
        index = {id(r): i for i, r in enumerate(previous.sampled)} if previous is not None else {}
        unfed = [(req, index[id(req)]) for req, _ in rows if id(req) in index]
        fed: Future[None] = Future()
        # a drafted request's rows follow its first: one (matcher, first row, drafts) each,
        # read now, on the engine's thread, which may clear the drafts before the fill ends
        drafted = [(r.grammar, row, list(r.draft)) for i, (r, row) in enumerate(rows)
                   if r.draft and (i == 0 or rows[i - 1][0] is not r)]
        plain = [(r.grammar, row) for r, row in rows if not r.draft]

        def fill() -> torch.Tensor:
            # pinned on CUDA, so the sampler's copy to the device is queued on the stream
            # instead of waiting for the forward in flight
            mask = torch.full((num_rows, self.words), -1, dtype=torch.int32, pin_memory=pinned)
            # the backend sets the allowed bits: ids past the tokenizer's vocabulary (padding) stay banned
            mask.index_fill_(0, torch.tensor([row for _, row in rows]), 0)
            if unfed:
                assert previous is not None and previous.result is not None
                try:
                    tokens = previous.result.resolve().next_tokens.tolist()
                    self.feed([(req, int(tokens[i])) for req, i in unfed])
                except BaseException as exc:
                    fed.set_exception(exc)
                    raise
                fed.set_result(None)  # from here the engine may process step N while the fill runs
            if plain:
                backend.fill(plain, mask)
            if drafted:
                backend.fill_drafts(drafted, mask)  # type: ignore[attr-defined]  # allowed_drafts checked it
            return mask

        if self.forward_on_host and not unfed:
            filled: Future[torch.Tensor] = Future()
            filled.set_result(fill())
            return filled
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        self._fed = fed if unfed else None
        return self._worker.submit(fill)

    def wait_fed(self) -> None:
        """Step N's tokens have reached their matchers (the worker feeds them under overlap)."""
        if self._fed is not None:
            self._fed.result()
            self._fed = None

    def allowed_drafts(self, req: Req, draft: list[int]) -> list[int]:
        """The longest prefix of `draft` that `req`'s grammar allows without completing ([]
        where the grammar backend cannot check drafts). Its matcher must be current."""
        backend = self.backend
        if not draft or backend is None or not hasattr(backend, "fill_drafts") or req.grammar_fed != req.num_output:
            return []
        return draft[: backend.draft_prefix(req.grammar, draft)]

    def feed(self, tokens: list[tuple[Req, int]]) -> None:
        if not tokens:
            return
        assert self.backend is not None
        for (req, _), ok in zip(tokens, self.backend.accept([(req.grammar, token) for req, token in tokens])):
            req.grammar_fed += 1
            # read now, by the thread that owns the matcher: `process` may run while a fill uses it
            req.grammar_done = req.grammar.done
            req.grammar_error = "" if ok else req.grammar.error or "refused"
