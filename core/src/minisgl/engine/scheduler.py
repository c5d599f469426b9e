"""The scheduling brain: continuous batching over the paged KV pool with a prefix cache.

Each step:
1. every running request that decodes needs one more slot; when the pool is short, the
   prefix cache gives back unlocked LRU prefixes, and if that is not enough the newest
   running requests are retracted (their KV freed, their tokens kept) and requeued;
2. requests that are part way through a chunked prefill get their next chunk;
3. waiting requests are admitted in the queue policy's order while the prefill token
   budget (--max-prefill-length), the running limit (--max-running-requests) and the pool
   allow; each takes the longest cached prefix it can (locked while it runs) and all the
   pages its remaining prompt needs, so a prefill never stalls half way for memory;
4. one ForwardBatch mixes the decodes and the prefill chunks; the rows that reach the end
   of their tokens are sampled;
5. sampled tokens are appended, finished requests insert their KV into the cache and give
   back the rest.

Request lengths are capped on entry (prompt + max_new_tokens within the context and the
pool), so a request running alone always fits: retraction can always make progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..cache.base import PrefixCache
from ..cache.pool import PagePool
from .batch import ForwardBatch, ForwardResult, ModelRunner, SamplingBatch
from .messages import EngineOutput
from .queue_policy import QueuePolicy
from .request import Req

log = logging.getLogger("minisgl.engine")


@dataclass
class _Scheduled:
    batch: ForwardBatch
    reqs: list[Req]  # in batch order
    sampled: list[Req]  # rows of the sampling batch, in order


class Scheduler:
    def __init__(
        self,
        runner: ModelRunner,
        cache: PrefixCache,
        policy: QueuePolicy,
        *,
        page_size: int,
        max_running_requests: int,
        max_prefill_length: int,
        max_context_len: int,
        decode_log_stride: int = 0,
        sampler_device: torch.device | None = None,
    ) -> None:
        self.runner = runner
        self.cache = cache
        self.policy = policy
        self.P = page_size
        self.pool = PagePool(runner.kv_capacity(), page_size)
        self.max_running = max_running_requests
        self.max_prefill = max_prefill_length
        self.max_context_len = max_context_len
        self.decode_log_stride = decode_log_stride
        self.device = sampler_device or runner.device
        width = min(max_context_len, self.pool.num_slots) + 1
        self.page_table = torch.zeros(max_running_requests, width, dtype=torch.int64, device=self.device)
        self._free_rows = list(range(max_running_requests - 1, -1, -1))
        self.waiting: dict[str, Req] = {}
        self.running: list[Req] = []
        self.steps = 0
        self.decode_steps = 0
        self.counters = {
            "prompt_tokens_total": 0,
            "generation_tokens_total": 0,
            "cached_tokens_total": 0,
            "cache_hits": 0,
            "cache_misses": 0,
            "retractions_total": 0,
            "evicted_tokens_total": 0,
            "warm_tokens_total": 0,
        }
        self.on_finish: Callable[[Req], None] | None = None

    # ---- capacity -----------------------------------------------------------------
    def _pages_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.P)

    def _ensure_free_pages(self, n: int) -> bool:
        """Make `n` pages free, evicting unlocked cached prefixes if needed."""
        short = n - self.pool.free_pages
        if short > 0:
            freed = self.cache.evict(short * self.P)
            if freed:
                self.counters["evicted_tokens_total"] += len(freed)
                self.pool.free_slots(freed)
        return self.pool.free_pages >= n

    def _grow(self, req: Req, n_tokens: int, writes: list[tuple[int, int, int]]) -> None:
        """Give `req` slots up to position kv_len + n_tokens (pages must be free)."""
        need = self._pages_for(req.kv_len + n_tokens) - len(req.slots) // self.P
        if need <= 0:
            return
        pages = self.pool.alloc(need)
        start = len(req.slots)
        new_slots = self.pool.slots_of(pages)
        req.private_pages.extend(pages)
        req.slots.extend(new_slots)
        writes.extend((req.row, start + i, s) for i, s in enumerate(new_slots))

    # ---- admission / release ------------------------------------------------------
    def add(self, req: Req) -> None:
        self.waiting[req.rid] = req

    def _admit(self, req: Req, budget: int, writes: list[tuple[int, int, int]]) -> bool:
        # keep the last token out of the match: it must run to give the logits
        match = self.cache.match_prefix(req.all_ids[: len(req.all_ids) - 1])
        self.cache.lock(match.handle)
        need = self._pages_for(len(req.all_ids)) - match.length // self.P
        if not self._ensure_free_pages(need):
            self.cache.unlock(match.handle)
            return False
        req.cache_handle, req.cached_len = match.handle, match.length
        req.slots = list(match.slots)
        req.kv_len = match.length
        req.row = self._free_rows.pop()
        writes.extend((req.row, i, s) for i, s in enumerate(match.slots))
        self._grow(req, len(req.all_ids) - req.kv_len, writes)
        del self.waiting[req.rid]
        self.running.append(req)
        first = req.prompt_cached_tokens < 0
        if first:
            req.prompt_cached_tokens = match.length
        if first and not req.warm_only:
            req.prompt_cached_tokens = match.length
            self.counters["prompt_tokens_total"] += len(req.prompt_ids)
            self.counters["cached_tokens_total"] += match.length
            self.counters["cache_hits" if match.length else "cache_misses"] += 1
        if not req.warm_only:
            log.info(
                "prefill rid=%s len=%d cached=%d (prefix cache %s)%s",
                req.rid, len(req.all_ids), match.length, "hit" if match.length else "miss",
                "" if first else f" after retraction #{req.num_retractions}",
            )
        return True

    def _release_kv(self, req: Req, keep_in_cache: bool) -> None:
        """Give back everything `req` holds; its computed prefix may stay in the cache."""
        if req.row < 0:
            return
        self.cache.unlock(req.cache_handle)
        to_free: list[int] = []
        aligned = req.kv_len // self.P * self.P
        if keep_in_cache and aligned > 0:
            present, to_free = self.cache.insert(req.all_ids[:aligned], req.slots[:aligned], prompt_len=len(req.prompt_ids))
            if req.warm_only:
                self.counters["warm_tokens_total"] += aligned - present
            to_free = to_free + req.slots[aligned:]
        else:
            to_free = req.slots[req.cached_len :]
        self.pool.free_slots(to_free)
        self.page_table[req.row].zero_()
        self._free_rows.append(req.row)
        req.row, req.slots, req.private_pages = -1, [], []
        req.cache_handle, req.cached_len, req.kv_len = None, 0, 0

    def _retract(self, req: Req) -> None:
        self._release_kv(req, keep_in_cache=False)
        self.running.remove(req)
        req.num_retractions += 1
        self.counters["retractions_total"] += 1
        self.waiting[req.rid] = req
        log.info("retract rid=%s (KV pool full): requeued with %d tokens", req.rid, len(req.all_ids))

    def finish(self, req: Req, reason: str) -> None:
        req.finished_reason = reason
        if req.rid in self.waiting:
            del self.waiting[req.rid]
        elif req in self.running:
            self._release_kv(req, keep_in_cache=True)
            self.running.remove(req)

    # ---- one step -----------------------------------------------------------------
    def schedule(self) -> _Scheduled | None:
        writes: list[tuple[int, int, int]] = []
        retracted = self._reserve_decodes(writes)
        items: list[tuple[Req, int]] = []
        budget = self.max_prefill
        for req in self.running:
            if req.pending == 1:
                items.append((req, 1))
            elif budget > 0:
                n = min(req.pending, budget)
                budget -= n
                items.append((req, n))
        if not retracted and self.waiting and budget > 0:
            views = [r.waiting_view() for r in self.waiting.values()]
            for view in self.policy.order(views, self.cache.match_len):
                if len(self.running) >= self.max_running or budget <= 0:
                    break
                req = self.waiting[view.rid]
                if not self._admit(req, budget, writes):
                    break  # head of the queue waits for memory: no overtaking
                n = min(req.pending, budget)
                budget -= n
                items.append((req, n))
        if writes:
            rows, cols, slots = zip(*writes)
            idx = (torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device))
            self.page_table.index_put_(idx, torch.tensor(slots, dtype=torch.int64, device=self.device))
        if not items:
            return None
        return self._build(items)

    def _reserve_decodes(self, writes: list[tuple[int, int, int]]) -> bool:
        """One slot for every decoding request; evict, then retract the newest, if short."""
        retracted = False
        while True:
            decoding = [r for r in self.running if r.pending == 1]
            need = sum(1 for r in decoding if r.kv_len + 1 > len(r.slots))
            if self._ensure_free_pages(need):
                break
            victim = max(self.running, key=lambda r: r.seq)
            self._retract(victim)
            retracted = True
        for req in decoding:
            self._grow(req, 1, writes)
        return retracted

    def _build(self, items: list[tuple[Req, int]]) -> _Scheduled:
        input_ids: list[int] = []
        positions: list[int] = []
        out_slots: list[int] = []
        extend_lens, prefix_lens, sample_indices = [], [], []
        sampled: list[Req] = []
        for req, n in items:
            start = req.kv_len
            input_ids.extend(req.all_ids[start : start + n])
            positions.extend(range(start, start + n))
            out_slots.extend(req.slots[start : start + n])
            extend_lens.append(n)
            prefix_lens.append(start)
            if start + n == len(req.all_ids):
                sample_indices.append(len(input_ids) - 1)
                sampled.append(req)
        reqs = [r for r, _ in items]
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        rows = torch.tensor([r.row for r in reqs], device=self.device)
        dev = self.device
        batch = ForwardBatch(
            input_ids=torch.tensor(input_ids, dtype=torch.int64, device=dev),
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            out_slots=torch.tensor(out_slots, dtype=torch.int64, device=dev),
            page_table=self.page_table.index_select(0, rows)[:, : max(seq_lens)],
            extend_lens=extend_lens,
            prefix_lens=prefix_lens,
            sample_indices=torch.tensor(sample_indices, dtype=torch.int64, device=dev),
            sampling=self._sampling(sampled) if sampled else None,
            seq_lens=seq_lens,
        )
        for req, n in items:
            req.kv_len += n
        return _Scheduled(batch, reqs, sampled)

    def _sampling(self, reqs: Sequence[Req]) -> SamplingBatch:
        dev = self.device
        f32 = dict(dtype=torch.float32, device=dev)
        i64 = dict(dtype=torch.int64, device=dev)
        ps = [r.params for r in reqs]
        needs_penalties = any(r.needs_penalties for r in reqs)
        history = None
        if needs_penalties:
            width = max(len(r.all_ids) for r in reqs)
            history = torch.tensor([r.all_ids + [-1] * (width - len(r.all_ids)) for r in reqs], **i64)
        under_min = [r.num_output < r.params.min_new_tokens for r in reqs]
        min_mask = stop_ids = None
        if any(under_min):
            k = max(1, max(len(r.stop_ids) for r in reqs))
            stop_ids = torch.tensor([sorted(r.stop_ids) + [-1] * (k - len(r.stop_ids)) for r in reqs], **i64)
            min_mask = torch.tensor(under_min, dtype=torch.bool, device=dev)
        top_logprobs = max(p.top_logprobs for p in ps)
        return SamplingBatch(
            temperature=torch.tensor([r.temperature for r in reqs], **f32),
            top_p=torch.tensor([p.top_p for p in ps], **f32),
            top_k=torch.tensor([max(p.top_k, 0) for p in ps], **i64),
            min_p=torch.tensor([p.min_p for p in ps], **f32),
            repetition_penalty=torch.tensor([p.repetition_penalty for p in ps], **f32),
            frequency_penalty=torch.tensor([p.frequency_penalty for p in ps], **f32),
            presence_penalty=torch.tensor([p.presence_penalty for p in ps], **f32),
            seeds=torch.tensor([r.seed for r in reqs], **i64),
            steps=torch.tensor([r.num_output for r in reqs], **i64),
            history=history,
            min_new_tokens_mask=min_mask,
            stop_token_ids=stop_ids,
            top_logprobs=top_logprobs,
            want_logprobs=any(p.logprobs for p in ps) or top_logprobs > 0,
            all_greedy=all(r.temperature == 0.0 for r in reqs),
            needs_penalties=needs_penalties,
        )

    def process(self, scheduled: _Scheduled, result: ForwardResult) -> list[EngineOutput]:
        """Append the sampled tokens, finish what is done, and say what each request got."""
        self.steps += 1
        if not scheduled.sampled:
            return []
        result = result.resolve()
        tokens = result.next_tokens.tolist()
        logprobs = result.logprobs.tolist() if result.logprobs is not None else None
        top_ids = result.top_logprob_ids.tolist() if result.top_logprob_ids is not None else None
        top_vals = result.top_logprob_values.tolist() if result.top_logprob_values is not None else None
        outputs = []
        for i, req in enumerate(scheduled.sampled):
            tok = int(tokens[i])
            req.all_ids.append(tok)
            req.num_output += 1
            self.counters["generation_tokens_total"] += 0 if req.warm_only else 1
            reason = None
            if tok in req.stop_ids and req.num_output >= req.params.min_new_tokens:
                reason = "stop"
            elif req.num_output >= req.max_new_tokens or len(req.all_ids) >= self.max_context_len:
                reason = "length"
            if reason is not None:
                self.finish(req, reason)
            if req.warm_only:
                continue
            out = EngineOutput(
                rid=req.rid,
                new_token_ids=[tok],
                finished=reason is not None,
                finish_reason=reason,
                prompt_tokens=len(req.prompt_ids),
                cached_tokens=max(req.prompt_cached_tokens, 0),
                completion_tokens=req.num_output,
            )
            if req.params.logprobs or req.params.top_logprobs:
                out.logprobs = [logprobs[i]] if logprobs is not None else None
                if req.params.top_logprobs and top_ids is not None and top_vals is not None:
                    k = req.params.top_logprobs
                    out.top_logprobs = [list(zip(top_ids[i][:k], top_vals[i][:k]))]
            outputs.append(out)
        if scheduled.batch.is_decode:
            self.decode_steps += 1
            if self.decode_log_stride and self.decode_steps % self.decode_log_stride == 0:
                log.info(
                    "decode step %d: batch=%d running=%d waiting=%d kv used=%d/%d cached=%d",
                    self.decode_steps, scheduled.batch.batch_size, len(self.running), len(self.waiting),
                    self.kv_used_tokens(), self.pool.num_slots, self.cache.total_tokens,
                )
        return outputs

    # ---- accounting ---------------------------------------------------------------
    def kv_used_tokens(self) -> int:
        """Slots held privately by running requests."""
        return sum(len(r.slots) - r.cached_len for r in self.running)

    def check_invariants(self) -> None:
        """Every page is free, held by one running request, or held by the cache, once."""
        owner: dict[int, str] = {}

        def claim(pages: list[int], who: str) -> None:
            for p in pages:
                if p in owner:
                    raise AssertionError(f"KV page {p} is held by {owner[p]} and by {who}")
                owner[p] = who

        claim(self.pool.free_page_ids(), "the free list")
        claim(self.pool.pages_of(self.cache.cached_slots()), "the prefix cache")
        for req in self.running:
            if sorted(self.pool.pages_of(req.slots[req.cached_len :])) != sorted(req.private_pages):
                raise AssertionError(f"request {req.rid}: slots and private pages disagree")
            if req.row < 0 or req.kv_len > len(req.slots):
                raise AssertionError(f"request {req.rid}: kv_len {req.kv_len} beyond its {len(req.slots)} slots")
            claim(req.private_pages, f"request {req.rid}")
        for req in self.waiting.values():
            if req.row >= 0 or req.slots or req.cache_handle is not None:
                raise AssertionError(f"waiting request {req.rid} still holds KV")
        missing = set(range(self.pool.num_pages)) - set(owner)
        if missing:
            raise AssertionError(f"KV pages leaked (held by nobody): {sorted(missing)[:16]}")
        if len(self._free_rows) + len(self.running) != self.page_table.shape[0]:
            raise AssertionError("page-table rows leaked")
        if self.cache.total_tokens != len(self.cache.cached_slots()):
            raise AssertionError("prefix cache token accounting is off")
        if not self.running and self.cache.locked_tokens != 0:
            raise AssertionError(f"{self.cache.locked_tokens} cached tokens locked with no running request")

    def now(self) -> float:
        return time.monotonic()
