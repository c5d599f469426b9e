"""The standalone proposer: a smaller draft model with the target's tokenizer, run by the
target's backend as a second ModelRunner with a KV pool of its own.

Each request keeps the draft model's K/V of its tokens between steps (keyed by request
id). A proposal first catches the draft up: the K/V past the longest prefix still equal to
the request's tokens is dropped (the target rejected those drafts), the missing suffix runs
in one forward, then k greedy steps of one token each give the k drafts. The requests that
draft in a step share these forwards. The draft pool is
only a cache of work: when it is short, the least recently drafted requests lose their
draft K/V and recompute it on their next proposal.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import msgspec
import torch

from ..cache.naive import NaiveCache
from ..models import resolve_model
from ..sampling_params import SamplingParams
from .batch import ForwardBatch, ModelRunner, SamplingBatch, to_device
from .kv import KVManager
from .request import Req
from .speculative import SPECULATE_UP_TO, Proposer

log = logging.getLogger("minisgl.engine")

# texts whose encodings must agree between the two tokenizers
_PROBES = ("Hello, world! The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x * 2  # ünïcödé",
           "  1234 5678\t\n")


def check_same_tokenizer(target_path: str, draft_path: str, trust_remote_code: bool) -> int:
    """Refuse a draft model whose tokenizer is not the target's: its drafts would be ids of
    other tokens. The number of tokens the tokenizer knows."""
    from transformers import AutoTokenizer

    target = AutoTokenizer.from_pretrained(target_path, trust_remote_code=trust_remote_code)
    draft = AutoTokenizer.from_pretrained(draft_path, trust_remote_code=trust_remote_code)
    why = None
    if len(target) != len(draft):
        why = f"vocabularies of {len(draft)} and {len(target)} tokens"
    elif target.get_vocab() != draft.get_vocab():
        why = "vocabularies of the same size with different tokens"
    else:
        for text in _PROBES:
            if target.encode(text) != draft.encode(text):
                why = f"different encodings of {text!r}"
                break
    if why is not None:
        raise ValueError(f"--speculative-draft-model-path {draft_path}: its tokenizer differs from the target "
                         f"model {target_path}'s ({why}); the draft model must share the target's tokenizer")
    return len(target)


def _greedy(rows: int, device: torch.device) -> SamplingBatch:
    """`rows` argmax rows."""
    def full(value: float | int, dtype: torch.dtype) -> torch.Tensor:
        return torch.full((rows,), value, dtype=dtype, device=device)

    return SamplingBatch(
        temperature=full(0.0, torch.float32), top_p=full(1.0, torch.float32), top_k=full(0, torch.int64),
        min_p=full(0.0, torch.float32), repetition_penalty=full(1.0, torch.float32),
        frequency_penalty=full(0.0, torch.float32), presence_penalty=full(0.0, torch.float32),
        seeds=full(-1, torch.int64), steps=full(0, torch.int64), all_greedy=True,
        top_k_max=0, any_top_p=False, any_min_p=False, any_seeded=False,
    )


class StandaloneProposer(Proposer):
    """Drafts with a second, smaller model (--speculative-draft-model-path)."""

    def __init__(self, settings: Any, registry: Any = None) -> None:
        from ..plugins import get_registry
        from .backend_choice import load_runner

        target = resolve_model(settings.model_path, dummy_weight=settings.dummy_weight, progress=False)
        model = resolve_model(settings.speculative_draft_model_path, dummy_weight=settings.dummy_weight)
        # ids past the tokenizer's are embedding padding, which the two models may size differently
        self.num_tokens = check_same_tokenizer(str(target.path), str(model.path), settings.trust_remote_code)
        # the draft pool holds the requests that draft at once (a step drafts for at most
        # SPECULATE_UP_TO); --num-pages, when set, sizes it like the target's. Under --tp-size
        # the draft model runs whole in this process, on rank 0's device, outside the
        # target's group (tp_size 1: it neither joins the group nor binds its port); it is
        # small, and its forwards go between the target's, which the other ranks wait for.
        draft_settings = msgspec.structs.replace(settings, model_path=str(model.path),
                                                 max_running_requests=SPECULATE_UP_TO, tp_size=1)
        self.runner: ModelRunner
        self.runner, backend, _ = load_runner(draft_settings, registry or get_registry(), model)
        log.info("standalone proposer: draft model %s on backend %s, %d KV slots", model.name, backend,
                 self.runner.kv_capacity())
        self.device = torch.device(self.runner.device)
        num_slots = self.runner.kv_capacity()
        self.max_len = min(self.runner.max_context_len, num_slots)
        self.kv = KVManager(num_slots, settings.page_size, NaiveCache(settings.page_size), 2 * SPECULATE_UP_TO,
                            self.max_len + 1, self.device, Counter())
        self.states: dict[str, Req] = {}  # request id -> its draft K/V; oldest proposal first
        self._sampling: dict[int, SamplingBatch] = {}  # greedy rows, by their number

    def propose(self, req_id: str, token_ids: list[int], max_tokens: int) -> list[int]:
        return self.propose_batch([(req_id, token_ids, max_tokens)])[0]

    def propose_batch(self, items: list[tuple[str, list[int], int]]) -> list[list[int]]:
        """`propose` for several requests at once: one forward catches all of them up, then
        each greedy step is one forward of every request still drafting."""
        drafts: list[list[int]] = [[] for _ in items]
        batch = {rid for rid, _, _ in items}
        ready: list[tuple[int, Req, list[int], int]] = []
        for i, (rid, token_ids, max_tokens) in enumerate(items):
            st = self._prepare(rid, token_ids, max_tokens, batch)
            if st is not None:
                ready.append((i, st, token_ids, max_tokens))
        if not ready:
            return drafts
        self.kv.flush()
        caught_up = self._forward([(st, token_ids[st.kv_len :]) for _, st, token_ids, _ in ready])
        for (i, *_), tok in zip(ready, caught_up):
            drafts[i].append(tok)
        while True:
            going = [(i, st) for i, st, _, k in ready if len(drafts[i]) < k and drafts[i][-1] < self.num_tokens]
            if not going:
                break
            for (i, _), tok in zip(going, self._forward([(st, drafts[i][-1:]) for i, st in going])):
                drafts[i].append(tok)
        for i, st, token_ids, _ in ready:
            st.all_ids = (list(token_ids) + drafts[i])[: st.kv_len]
            if drafts[i][-1] >= self.num_tokens:  # not a token: the drafts end before it
                drafts[i].pop()
        return drafts

    def _prepare(self, rid: str, token_ids: list[int], max_tokens: int, batch: set[str]) -> Req | None:
        """`rid`'s draft K/V cut back to the tokens it still shares with `token_ids`, and
        slots for the drafting ahead; None when it does not fit (its draft K/V dropped)."""
        n = len(token_ids)
        need = n + max_tokens - 1  # the last draft's K/V is never written
        if max_tokens <= 0 or n == 0 or need > self.max_len:
            self.release(rid)
            return None
        st = self.states.pop(rid, None)
        if st is not None:
            # the K/V of tokens that are no longer the request's (rejected drafts) goes; the
            # last token always runs again, for its logits
            keep = 0
            limit = min(st.kv_len, n - 1)
            while keep < limit and st.all_ids[keep] == token_ids[keep]:
                keep += 1
            self.kv.truncate(st, keep)
            st.all_ids = list(token_ids)
        else:
            st = Req(rid=rid, prompt_ids=list(token_ids), params=SamplingParams(), max_new_tokens=0,
                     stop_ids=frozenset())
            if not self._make_room(self.kv.pages_for(n), batch, row=True) or self.kv.admit(st) is None:
                return None
        if not self._make_room(self.kv.pages_short(st, need), batch):
            self.kv.release(st, keep_in_cache=False)
            return None
        self.kv.grow(st, need)
        self.states[rid] = st
        return st

    def release(self, req_id: str) -> None:
        st = self.states.pop(req_id, None)
        if st is not None:
            self.kv.release(st, keep_in_cache=False)

    def _make_room(self, pages: int, keep: set[str], row: bool = False) -> bool:
        """`pages` free pages (and a free page-table row), dropping the draft K/V of the
        least recently drafted requests outside `keep` as needed."""
        while self.kv.pool.free_pages < pages or (row and self.kv.free_rows == 0):
            victim = next((rid for rid in self.states if rid not in keep), None)
            if victim is None:
                return False
            self.release(victim)
        return True

    def _forward(self, runs: list[tuple[Req, list[int]]]) -> list[int]:
        """Run each request's ids at its next positions, writing their K/V; each one's
        greedy next token."""
        d = self.device
        ids, positions, out_slots, extend_lens, prefix_lens, last = [], [], [], [], [], []
        for st, new in runs:
            start, m = st.kv_len, len(new)
            ids.extend(new)
            positions.extend(range(start, start + m))
            out_slots.extend(st.slots[start : start + m])
            extend_lens.append(m)
            prefix_lens.append(start)
            last.append(len(ids) - 1)
        sts = [st for st, _ in runs]
        batch = ForwardBatch(
            input_ids=to_device(ids, d), positions=to_device(positions, d), out_slots=to_device(out_slots, d),
            page_table=self.kv.table_rows(sts, max(p + e for p, e in zip(prefix_lens, extend_lens))),
            extend_lens=extend_lens, prefix_lens=prefix_lens, sample_indices=to_device(last, d),
            sampling=self._greedy(len(runs)),
        )
        for st, new in runs:
            st.kv_len += len(new)
        return [int(t) for t in self.runner.forward(batch).resolve().next_tokens.tolist()]

    def _greedy(self, rows: int) -> SamplingBatch:
        if rows not in self._sampling:
            self._sampling[rows] = _greedy(rows, self.device)
        return self._sampling[rows]

    def check(self) -> None:
        """The draft pool's pages: free or held by one request's draft K/V."""
        self.kv.check(list(self.states.values()), [])

    def shutdown(self) -> None:
        if self.runner is not None:  # the engine may shut down twice
            self.runner.shutdown()
            self.runner = None  # type: ignore[assignment]
