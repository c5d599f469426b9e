"""What runs in a step: the running decodes, the next chunks of prefills under way, then
waiting requests admitted in the queue policy's order while the prefill token budget
(--max-prefill-length), the running limit (--max-running-requests) and the pool allow.
An admitted request takes the longest cached prefix it can (locked while it runs) and all
the pages its remaining prompt needs, so a prefill never stalls half way for memory.

Warm requests (`warm_only`, insert_prefix) come after all user work: user decodes, user
prefill chunks and user admissions take the prefill budget, the rows and the KV first; a
user request that cannot be admitted makes running warm requests yield (retracted: what
they computed stays in the prefix cache), and no warm request is admitted while a user
request waits.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from .decode import DecodeManager
from .kv import KVManager
from .queue_policy import QueuePolicy
from .request import Req
from .sampling_rows import SamplingRows

log = logging.getLogger("minisgl.engine")

StepItems = list[tuple[Req, int]]  # (request, tokens it runs this step), in batch order


class Admission:
    def __init__(self, kv: KVManager, decode: DecodeManager, rows: SamplingRows, policy: QueuePolicy,
                 counters: Counter[str], *, max_running: int, max_prefill: int) -> None:
        self.kv = kv
        self.decode = decode
        self.rows = rows
        self.policy = policy
        self.counters = counters
        self.running = decode.running
        self.waiting = decode.waiting
        self.max_running = max_running
        self.max_prefill = max_prefill
        # warm requests running at once: they never take every row
        self.max_warm_running = max(1, max_running // 4)
        # prefill tokens warm requests may take in one step: alone, and beside user requests
        self.warm_tokens_per_step = max(kv.P, max_prefill // 4)
        self.warm_tokens_beside_users = max(kv.P, max_prefill // 16)

    def plan(self, retracted: bool) -> StepItems:
        """The step's items; `retracted`: the decode reservation had to retract, so nothing
        new is admitted this step."""
        items: StepItems = []
        warm_running: list[Req] = []
        budget = self.max_prefill
        for req in self.running:
            if self.decode.will_finish(req):
                continue
            if req.warm_only:
                warm_running.append(req)  # after the user work below
            elif req.pending == 1:
                items.append((req, 1 + len(req.draft)))
            elif budget > 0:
                n = min(req.pending, budget)
                budget -= n
                items.append((req, n))
        admit_warm = not retracted
        if not retracted and self.waiting and budget > 0:
            # a retracted request whose last token is still in flight waits for its value
            waiting = [r for r in self.waiting.values() if r.inflight == 0 and not r.warm_only]
            for req in self.policy.order(waiting, self.kv.cache.match_len):
                if budget <= 0:
                    break
                if not self._admit_user(req):
                    admit_warm = False  # head of the queue waits for memory: no overtaking, not by warming either
                    break
                budget = self._take(req, budget, items)
        # warm work gets what is left, and never a whole step: a user request that arrives
        # waits for at most a short warm step; next to user work it gets a smaller share, so
        # a step that carries a user's decode stays short
        users = any(not r.warm_only for r in self.running)
        budget = min(budget, self.warm_tokens_beside_users if users else self.warm_tokens_per_step)
        for req in warm_running:
            if budget <= 0:
                break
            if req.row >= 0:  # not yielded to a user request above
                budget = self._take(req, budget, items)
        if admit_warm and budget > 0 and self.waiting:
            warm = sorted((r for r in self.waiting.values() if r.warm_only and r.inflight == 0), key=lambda r: r.seq)
            for req in warm:
                if budget <= 0 or len(self.running) >= self.max_running:
                    break
                if sum(r.warm_only for r in self.running) >= self.max_warm_running or not self._admit(req):
                    break
                budget = self._take(req, budget, items)
        return items

    @staticmethod
    def _take(req: Req, budget: int, items: StepItems) -> int:
        n = min(req.pending, budget)
        items.append((req, n))
        return budget - n

    def _admit_user(self, req: Req) -> bool:
        """Admit a user request, making running warm requests yield their row and KV if
        that is what stands in its way."""
        while True:
            if len(self.running) < self.max_running and self._admit(req):
                return True
            warm = [r for r in self.running if r.warm_only and r.inflight == 0]
            if not warm:
                return False
            self.decode.retract(max(warm, key=lambda r: r.seq), why="a warm request yields to a user request",
                                counter="warm_yields_total")

    def _admit(self, req: Req) -> bool:
        matched = self.kv.admit(req)
        if matched is None:
            return False
        self.rows.took_row(req)
        del self.waiting[req.rid]
        self.running.append(req)
        first = req.prompt_cached_tokens < 0
        if first:
            req.prompt_cached_tokens = matched
            req.queue_time_s = max(time.time() - req.arrival_time, 0.0)
        if req.warm_only:
            return True
        c = self.counters
        if first:
            c["prompt_tokens_total"] += len(req.prompt_ids)
            c["cached_tokens_total"] += matched
            c["cache_hits" if matched else "cache_misses"] += 1
        else:
            c["readmit_cached_tokens_total"] += matched
        log.info("prefill rid=%s len=%d cached=%d (prefix cache %s)%s", req.rid, len(req.all_ids), matched,
                 "hit" if matched else "miss", "" if first else f" after retraction #{req.num_retractions}")
        return True
