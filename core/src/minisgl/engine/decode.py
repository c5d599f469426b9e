"""Decode reservation and retraction: every decoding request gets its next slot, and when
the pool is short the prefix cache gives back unlocked LRU prefixes first, then the newest
running requests are retracted and requeued. A retracted request keeps its tokens and its
computed K/V goes to the prefix cache (sglang does the same), so readmission reuses what
the pool can still hold.

Request lengths are capped on entry (prompt + max_new_tokens within the context and the
pool), so a request running alone always fits: retraction always makes progress.
"""

from __future__ import annotations

import logging
from collections import Counter

from .kv import KVManager
from .request import Req
from .speculative import Speculation

log = logging.getLogger("minisgl.engine")


class DecodeManager:
    def __init__(self, kv: KVManager, running: list[Req], waiting: dict[str, Req], counters: Counter[str],
                 max_context_len: int, speculation: Speculation | None = None) -> None:
        self.kv = kv
        self.speculation = speculation
        self.running = running
        self.waiting = waiting
        self.counters = counters
        self.max_context_len = max_context_len

    def will_finish(self, req: Req) -> bool:
        """An in-flight token certainly ends the request (length): nothing more to schedule."""
        if req.pooling is not None:  # prefill only: done once its whole prompt has run
            return req.kv_len >= len(req.all_ids)
        if req.inflight == 0:
            return False
        n = req.num_output + req.inflight
        return n >= req.max_new_tokens or len(req.all_ids) + req.inflight >= self.max_context_len

    def reserve(self) -> bool:
        """Slots for every decoding request's next token and its drafts; True when some
        requests were retracted. Drafts are dropped before anyone is retracted for them."""
        retracted = False
        while True:
            decoding = [r for r in self.running if r.pending == 1 and r.pooling is None and not self.will_finish(r)]
            if self.speculation is not None:
                self.speculation.draft(decoding)
            need = sum(self.kv.pages_short(r, r.kv_len + 1 + len(r.draft)) for r in decoding)
            if self.kv.ensure_free_pages(need):
                break
            if any(r.draft for r in decoding):
                for r in decoding:
                    r.draft = []
                if self.kv.ensure_free_pages(sum(self.kv.pages_short(r, r.kv_len + 1) for r in decoding)):
                    break
            # warm requests go first (they only fill the cache), then the newest
            self.retract(max(self.running, key=lambda r: (r.warm_only, r.seq)))
            retracted = True
        for req in decoding:
            self.kv.grow(req, req.kv_len + 1 + len(req.draft))
        return retracted

    def retract(self, req: Req, why: str = "KV pool full", counter: str = "retractions_total") -> None:
        """Requeue a running request: its computed K/V goes to the cache, unlocked, where pool
        pressure may still evict it (it is the newest entry); what survives is a prefix hit
        on readmission."""
        kept = req.computed_ids // self.kv.P * self.kv.P
        self.kv.release(req, keep_in_cache=True)
        self.running.remove(req)
        req.draft = []
        if self.speculation is not None:
            self.speculation.release(req)
        req.num_retractions += 1
        self.counters[counter] += 1
        self.waiting[req.rid] = req
        log.info("retract rid=%s (%s): requeued with %d tokens, %d of them offered to the prefix cache",
                 req.rid, why, len(req.all_ids), kept)
