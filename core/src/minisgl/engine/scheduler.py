"""The scheduling brain: continuous batching over the paged KV pool with a prefix cache.

Each step:
1. every running request that decodes needs one more slot; when the pool is short, the
   prefix cache gives back unlocked LRU prefixes, and if that is not enough the newest
   running requests are retracted and requeued: their tokens are kept and their computed
   K/V goes into the prefix cache (sglang does the same), so readmission reuses what the
   pool can still hold;
2. requests that are part way through a chunked prefill get their next chunk;
3. waiting requests are admitted in the queue policy's order while the prefill token
   budget (--max-prefill-length), the running limit (--max-running-requests) and the pool
   allow; each takes the longest cached prefix it can (locked while it runs) and all the
   pages its remaining prompt needs, so a prefill never stalls half way for memory;
4. one ForwardBatch mixes the decodes and the prefill chunks; the rows that reach the end
   of their tokens are sampled;
5. sampled tokens are appended, finished requests insert their KV into the cache and give
   back the rest.

Overlap scheduling (runners with `supports_overlap`): step N+1 is built and launched
before step N's tokens are read back. A decoding request's input token for N+1 is then a
"future": its row in step N's device-side next_tokens, copied into input_ids on the device
(`future_tokens`), so the CPU never waits. Requests that step N finishes (a stop token)
ran one wasted row in N+1, which `process` discards. A request that step N certainly
finishes (max_new_tokens, the context) is not scheduled again.

Request lengths are capped on entry (prompt + max_new_tokens within the context and the
pool), so a request running alone always fits: retraction can always make progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..cache.base import PrefixCache
from ..cache.pool import PagePool
from ..grammar import GrammarBackend
from .batch import ForwardBatch, ForwardResult, ImageSlice, ModelRunner, SamplingBatch
from .messages import EngineOutput
from .queue_policy import QueuePolicy
from .request import Req

log = logging.getLogger("minisgl.engine")


@dataclass
class ScheduledBatch:
    batch: ForwardBatch
    reqs: list[Req]  # in batch order
    sampled: list[Req]  # rows of the sampling batch, in order
    result: ForwardResult | None = None  # set once the runner has launched it


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
        # the engine's grammar backend (minisgl.grammar), set with the first constrained request
        self.grammars: GrammarBackend | None = None
        self._mask_worker: ThreadPoolExecutor | None = None
        # the mask worker's feed of step N's tokens to their matchers, which `process` waits for
        self._grammars_fed: Future[None] | None = None
        self.device = torch.device(sampler_device or runner.device)
        self.forward_on_host = bool(getattr(runner, "forward_on_host", self.device.type == "cpu"))
        width = min(max_context_len, self.pool.num_slots) + 1
        self.page_table = torch.zeros(max_running_requests, width, dtype=torch.int64, device=self.device)
        self._free_rows = list(range(max_running_requests - 1, -1, -1))
        # each row's sampling values (temperature, top_p, min_p, repetition, frequency and
        # presence penalties; top_k, seed), written once when a request takes the row: a step
        # gathers its rows on the device instead of copying every value from the host
        self._row_floats = torch.zeros(6, max_running_requests, dtype=torch.float32, device=self.device)
        self._row_ints = torch.zeros(2, max_running_requests, dtype=torch.int64, device=self.device)
        self._new_rows: list[Req] = []
        # warm requests (insert_prefix) running at once: they never take every row
        self.max_warm_running = max(1, max_running_requests // 4)
        # prefill tokens warm requests may take in one step: alone, and beside user requests
        self.warm_tokens_per_step = max(page_size, max_prefill_length // 4)
        self.warm_tokens_beside_users = max(page_size, max_prefill_length // 16)
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
            "readmit_cached_tokens_total": 0,  # prefix hits of requests readmitted after a retraction
            "warm_yields_total": 0,  # warm requests retracted so a user request could run
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
        self._new_rows.append(req)
        writes.extend((req.row, i, s) for i, s in enumerate(match.slots))
        self._grow(req, len(req.all_ids) - req.kv_len, writes)
        del self.waiting[req.rid]
        self.running.append(req)
        first = req.prompt_cached_tokens < 0
        if first:
            req.prompt_cached_tokens = match.length
        elif not req.warm_only:
            self.counters["readmit_cached_tokens_total"] += match.length
        if first and not req.warm_only:
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
        # an in-flight token's K/V may be in the pool while its id is not known yet
        aligned = req.computed_ids // self.P * self.P
        if keep_in_cache and aligned > 0:
            present, to_free = self.cache.insert(req.all_ids[:aligned], req.slots[:aligned], prompt_len=len(req.prompt_ids))
            if req.warm_only:
                self.counters["warm_tokens_total"] += aligned - present
                req.warm_tokens += aligned - present
            to_free = to_free + req.slots[aligned:]
        else:
            to_free = req.slots[req.cached_len :]
        self.pool.free_slots(to_free)
        self.page_table[req.row].zero_()
        self._free_rows.append(req.row)
        req.row, req.slots, req.private_pages = -1, [], []
        req.cache_handle, req.cached_len, req.kv_len = None, 0, 0

    def _retract(self, req: Req, why: str = "KV pool full", count: bool = True) -> None:
        # its computed K/V goes to the cache, unlocked: pool pressure may still evict it (LRU,
        # and it is the newest entry), but whatever survives is a prefix hit on readmission
        kept = req.computed_ids // self.P * self.P
        self._release_kv(req, keep_in_cache=True)
        self.running.remove(req)
        req.num_retractions += 1
        self.counters["retractions_total" if count else "warm_yields_total"] += 1
        self.waiting[req.rid] = req
        log.info(
            "retract rid=%s (%s): requeued with %d tokens, %d of them offered to the prefix cache",
            req.rid, why, len(req.all_ids), kept,
        )

    def finish(self, req: Req, reason: str) -> None:
        req.finished_reason = reason
        if req.rid in self.waiting:
            del self.waiting[req.rid]
        elif req in self.running:
            self._release_kv(req, keep_in_cache=True)
            self.running.remove(req)

    # ---- one step -----------------------------------------------------------------
    def _will_finish(self, req: Req) -> bool:
        """An in-flight token certainly ends the request (length): nothing more to schedule."""
        if req.inflight == 0:
            return False
        n = req.num_output + req.inflight
        return n >= req.max_new_tokens or len(req.all_ids) + req.inflight >= self.max_context_len

    def schedule(self, previous: ScheduledBatch | None = None) -> ScheduledBatch | None:
        """The next batch. `previous` is the launched, unprocessed step whose device-side
        tokens feed this one's decode rows (overlap scheduling); None when all is processed.

        Warm requests (`warm_only`, insert_prefix) come after all user work: user decodes,
        user prefill chunks and user admissions take the prefill budget, the rows and the KV
        first; a user request that cannot be admitted makes running warm requests yield
        (retracted: what they computed stays in the prefix cache), and no warm request is
        admitted while a user request waits."""
        writes: list[tuple[int, int, int]] = []
        retracted = self._reserve_decodes(writes)
        items: list[tuple[Req, int]] = []
        warm_running: list[Req] = []
        budget = self.max_prefill
        for req in self.running:
            if self._will_finish(req):
                continue
            if req.warm_only:
                warm_running.append(req)  # after the user work below
            elif req.pending == 1:
                items.append((req, 1))
            elif budget > 0:
                n = min(req.pending, budget)
                budget -= n
                items.append((req, n))
        admit_warm = not retracted
        if not retracted and self.waiting and budget > 0:
            # a retracted request whose last token is still in flight waits for its value
            views = [r.waiting_view() for r in self.waiting.values() if r.inflight == 0 and not r.warm_only]
            for view in self.policy.order(views, self.cache.match_len):
                if budget <= 0:
                    break
                req = self.waiting[view.rid]
                if not self._admit_user(req, budget, writes):
                    admit_warm = False  # head of the queue waits for memory: no overtaking, not by warming either
                    break
                n = min(req.pending, budget)
                budget -= n
                items.append((req, n))
        # warm work gets what is left, and never a whole step: a user request that arrives
        # waits for at most a short warm step; next to user work it gets a smaller share, so
        # a step that carries a user's decode stays short
        users = any(not r.warm_only for r in self.running)
        budget = min(budget, self.warm_tokens_beside_users if users else self.warm_tokens_per_step)
        for req in warm_running:
            if budget <= 0:
                break
            if req.row < 0:  # yielded to a user request above
                continue
            n = min(req.pending, budget)
            budget -= n
            items.append((req, n))
        if admit_warm and budget > 0 and self.waiting:
            warm = sorted((r for r in self.waiting.values() if r.warm_only and r.inflight == 0), key=lambda r: r.seq)
            for req in warm:
                if budget <= 0 or len(self.running) >= self.max_running:
                    break
                if sum(r.warm_only for r in self.running) >= self.max_warm_running:
                    break
                if not self._admit(req, budget, writes):
                    break
                n = min(req.pending, budget)
                budget -= n
                items.append((req, n))
        if writes:
            rows, cols, slots = zip(*writes)
            self.page_table.index_put_((self._tensor(rows), self._tensor(cols)), self._tensor(slots))
        if not items:
            return None
        return self._build(items, previous)

    def _admit_user(self, req: Req, budget: int, writes: list[tuple[int, int, int]]) -> bool:
        """Admit a user request, making running warm requests yield their row and KV if
        that is what stands in its way."""
        while True:
            if len(self.running) < self.max_running and self._admit(req, budget, writes):
                return True
            if not self._yield_warm():
                return False

    def _yield_warm(self) -> bool:
        """Retract the newest running warm request (one with no token in flight)."""
        candidates = [r for r in self.running if r.warm_only and r.inflight == 0]
        if not candidates:
            return False
        self._retract(max(candidates, key=lambda r: r.seq), why="a warm request yields to a user request", count=False)
        return True

    def _reserve_decodes(self, writes: list[tuple[int, int, int]]) -> bool:
        """One slot for every decoding request; evict, then retract the newest, if short."""
        retracted = False
        while True:
            # a decode needs a page when its next position starts one (every step at page size 1)
            needy = [r for r in self.running if r.pending == 1 and r.kv_len + 1 > len(r.slots)
                     and not self._will_finish(r)]
            if self._ensure_free_pages(len(needy)):
                break
            # warm requests go first (they only fill the cache), then the newest
            victim = max(self.running, key=lambda r: (r.warm_only, r.seq))
            self._retract(victim)
            retracted = True
        P = self.P
        for req, page in zip(needy, self.pool.alloc(len(needy))):
            start = len(req.slots)
            req.private_pages.append(page)
            req.slots.extend(range(page * P, page * P + P))
            writes.extend((req.row, start + i, page * P + i) for i in range(P))
        return retracted

    def _build(self, items: list[tuple[Req, int]], previous: ScheduledBatch | None) -> ScheduledBatch:
        input_ids: list[int] = []
        future_at: list[int] = []  # positions in T whose token is a future of `previous`
        future_rows: list[int] = []
        positions: list[int] = []
        out_slots: list[int] = []
        extend_lens, prefix_lens, sample_indices = [], [], []
        sampled: list[Req] = []
        images: list[ImageSlice] = []
        for req, n in items:
            start = req.kv_len
            if req.images:
                images.extend(_image_slices(req, start, n, len(input_ids)))
            if start == len(req.all_ids):  # a decode of the token `previous` samples
                future_at.append(len(input_ids))
                future_rows.append(req.future_row)
                input_ids.append(0)
            elif n == 1:
                input_ids.append(req.all_ids[start])
            else:
                input_ids.extend(req.all_ids[start : start + n])
            if n == 1:
                positions.append(start)
                out_slots.append(req.slots[start])
            else:
                positions.extend(range(start, start + n))
                out_slots.extend(req.slots[start : start + n])
            extend_lens.append(n)
            prefix_lens.append(start)
            if start + n == len(req.all_ids) + req.inflight:
                sample_indices.append(len(input_ids) - 1)
                sampled.append(req)
        reqs = [r for r, _ in items]
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        rows = self._tensor([r.row for r in reqs])
        ids = self._tensor(input_ids)
        if future_at:
            if previous is None or previous.result is None:
                raise AssertionError("a decode row needs the token of a step that was not launched")
            # resolved on the device, in stream order after `previous`: the CPU never waits
            future = previous.result.future_tokens.to(self.device).index_select(0, self._tensor(future_rows))
            ids.index_copy_(0, self._tensor(future_at), future)
        batch = ForwardBatch(
            input_ids=ids,
            positions=self._tensor(positions),
            out_slots=self._tensor(out_slots),
            page_table=self.page_table.index_select(0, rows)[:, : max(seq_lens)],
            extend_lens=extend_lens,
            prefix_lens=prefix_lens,
            sample_indices=self._tensor(sample_indices),
            sampling=self._sampling(sampled, previous) if sampled else None,
            seq_lens=seq_lens,
            images=images,
        )
        for req, n in items:
            req.kv_len += n
        for i, req in enumerate(sampled):
            req.inflight += 1
            req.future_row = i
        return ScheduledBatch(batch, reqs, sampled)

    def _tensor(self, values: list, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """A host list on the device; through pinned memory on CUDA, so the copy is queued
        on the stream instead of waiting for the step in flight."""
        if self.device.type != "cuda":
            return torch.tensor(values, dtype=dtype, device=self.device)
        return torch.tensor(values, dtype=dtype).pin_memory().to(self.device, non_blocking=True)

    def _sampling(self, reqs: Sequence[Req], previous: ScheduledBatch | None) -> SamplingBatch:
        t = self._tensor
        self._write_row_sampling()
        rows = t([r.row for r in reqs])
        floats, ints = self._row_floats.index_select(1, rows), self._row_ints.index_select(1, rows)
        # what changes every step, or is rare, from the host
        produced = [r.num_output + r.inflight for r in reqs]  # counting the tokens still in flight
        needs_penalties = any(r.needs_penalties for r in reqs)
        history = None
        if needs_penalties:
            width = max(len(r.all_ids) for r in reqs)
            history = t([r.all_ids + [-1] * (width - len(r.all_ids)) for r in reqs])
        under_min = [n < r.params.min_new_tokens for n, r in zip(produced, reqs)]
        min_mask = stop_ids = None
        if any(under_min):
            k = max(1, max(len(r.stop_ids) for r in reqs))
            stop_ids = t([sorted(r.stop_ids) + [-1] * (k - len(r.stop_ids)) for r in reqs])
            min_mask = t(under_min, dtype=torch.bool)
        top_logprobs = max(r.params.top_logprobs for r in reqs)
        grammar_rows = [(r, row) for row, r in enumerate(reqs) if r.grammar is not None]
        bias_ids = bias = None
        if any(r.params.logit_bias for r in reqs):  # rare, like stop ids: padded [S, K] from the host
            k = max(len(r.params.logit_bias) for r in reqs)
            bias_ids = t([[*r.params.logit_bias] + [-1] * (k - len(r.params.logit_bias)) for r in reqs])
            bias = t([[*r.params.logit_bias.values()] + [0.0] * (k - len(r.params.logit_bias)) for r in reqs],
                     dtype=torch.float32)
        return SamplingBatch(
            temperature=floats[0], top_p=floats[1], min_p=floats[2], repetition_penalty=floats[3],
            frequency_penalty=floats[4], presence_penalty=floats[5], top_k=ints[0], seeds=ints[1],
            steps=t(produced),
            logit_bias_ids=bias_ids, logit_bias=bias,
            history=history,
            min_new_tokens_mask=min_mask,
            stop_token_ids=stop_ids,
            top_logprobs=top_logprobs,
            want_logprobs=top_logprobs > 0 or any(r.params.logprobs for r in reqs),
            all_greedy=all(r.temperature == 0.0 for r in reqs),
            needs_penalties=needs_penalties,
            top_k_max=max((r.params.top_k for r in reqs if r.temperature > 0), default=0),
            any_top_p=any(r.params.top_p < 1.0 for r in reqs if r.temperature > 0),
            any_min_p=any(r.params.min_p > 0 for r in reqs if r.temperature > 0),
            any_seeded=any(r.seed >= 0 for r in reqs),
            vocab_mask=self._vocab_mask(grammar_rows, len(reqs), previous) if grammar_rows else None,
        )

    def _write_row_sampling(self) -> None:
        """The sampling values of requests that took a page-table row since the last step."""
        new = [r for r in self._new_rows if r.row >= 0]
        self._new_rows = []
        if not new:
            return
        rows = self._tensor([r.row for r in new])
        self._row_floats.index_copy_(1, rows, self._tensor(
            [[r.temperature for r in new], [r.params.top_p for r in new], [r.params.min_p for r in new],
             [r.params.repetition_penalty for r in new], [r.params.frequency_penalty for r in new],
             [r.params.presence_penalty for r in new]], dtype=torch.float32))
        self._row_ints.index_copy_(1, rows, self._tensor([[max(r.params.top_k, 0) for r in new],
                                                          [r.seed for r in new]]))

    def _vocab_mask(self, rows: list[tuple[Req, int]], num_rows: int,
                    previous: ScheduledBatch | None) -> Future[torch.Tensor]:
        """The step's grammar bitmask, filled by the grammar backend on a worker thread while
        the forward runs (the sampler waits for it). Rows without a grammar allow everything.
        Under overlap the matchers still lack step N's tokens: the worker waits for them, feeds
        them, then fills, so the device runs step N+1's forward meanwhile and the engine
        processes step N once they are fed (a runner may leave the sampling for after that,
        ForwardResult.sample_later). The mask is made on the worker too. A forward on the
        host's cores takes all of them, and a fill beside it only contends with it
        (smollm2-135m, 64 rows, 2 cores: +11% a step against +5% filled first): there the
        mask is filled here, unless it must wait for step N's tokens."""
        words = -(-int(self.runner.vocab_size) // 32)
        pinned = self.device.type == "cuda"
        grammars = self.grammars
        assert grammars is not None, "requests with grammars need Scheduler.grammars"
        index = {id(r): i for i, r in enumerate(previous.sampled)} if previous is not None else {}
        unfed = [(req, index[id(req)]) for req, _ in rows if id(req) in index]
        fed: Future[None] = Future()

        def fill() -> torch.Tensor:
            # made before step N's tokens arrive, while the device still samples them; pinned on
            # CUDA, so the sampler's copy to the device is queued on the stream: from pageable
            # memory it waits for the forward in flight (2.3 ms a step at 64 rows, H200)
            mask = torch.full((num_rows, words), -1, dtype=torch.int32, pin_memory=pinned)
            # the backend sets the allowed bits: ids past the tokenizer's vocabulary (padding) stay banned
            mask.index_fill_(0, torch.tensor([row for _, row in rows]), 0)
            if unfed:
                assert previous is not None and previous.result is not None
                try:
                    tokens = previous.result.resolve().next_tokens.tolist()
                    self._feed_grammars([(req, int(tokens[i])) for req, i in unfed])
                except BaseException as exc:
                    fed.set_exception(exc)
                    raise
                fed.set_result(None)  # from here the engine may process step N while the fill runs
            grammars.fill([(r.grammar, row) for r, row in rows], mask)
            return mask

        if self.forward_on_host and not unfed:
            filled: Future[torch.Tensor] = Future()
            filled.set_result(fill())
            return filled
        if self._mask_worker is None:
            self._mask_worker = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        self._grammars_fed = fed if unfed else None
        return self._mask_worker.submit(fill)

    def _feed_grammars(self, tokens: list[tuple[Req, int]]) -> None:
        """Each output token reaches its matcher once: from the mask worker under overlap,
        else from `process`."""
        if not tokens:
            return
        assert self.grammars is not None
        for (req, _), ok in zip(tokens, self.grammars.accept([(req.grammar, token) for req, token in tokens])):
            req.grammar_fed += 1
            # read now, by the thread that owns the matcher: `process` may run while a fill uses it
            req.grammar_done = req.grammar.done
            req.grammar_error = "" if ok else req.grammar.error or "refused"

    def process(self, scheduled: ScheduledBatch, result: ForwardResult) -> list[EngineOutput]:
        """Append the sampled tokens, finish what is done, and say what each request got."""
        self.steps += 1
        if not scheduled.sampled:
            return []
        result = result.resolve()  # the only wait for the device
        if self._grammars_fed is not None:
            self._grammars_fed.result()  # the mask worker feeds this step's tokens to their matchers
            self._grammars_fed = None
        tokens = result.next_tokens.tolist()
        logprobs = result.logprobs.tolist() if result.logprobs is not None else None
        top_ids = result.top_logprob_ids.tolist() if result.top_logprob_ids is not None else None
        top_vals = result.top_logprob_values.tolist() if result.top_logprob_values is not None else None
        # tokens the mask worker has not fed to their matchers (without overlap: all of them)
        self._feed_grammars([(req, int(tokens[i])) for i, req in enumerate(scheduled.sampled)
                             if req.grammar is not None and req.finished_reason is None
                             and req.grammar_fed <= req.num_output])
        outputs = []
        for i, req in enumerate(scheduled.sampled):
            req.inflight -= 1
            if req.finished_reason is not None:
                continue  # finished (stop token, abort) after this step was launched: a wasted row
            tok = int(tokens[i])
            req.all_ids.append(tok)
            req.num_output += 1
            self.counters["generation_tokens_total"] += 0 if req.warm_only else 1
            reason = None
            if req.grammar_error and tok not in req.stop_ids:
                log.warning("rid=%s: token %d outside its grammar (%s)", req.rid, tok, req.grammar_error)
            if tok in req.stop_ids and req.num_output >= req.params.min_new_tokens:
                reason = "stop"
            elif req.grammar_done:
                reason = "stop"  # the grammar is complete: only EOS could follow
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


def _image_slices(req: Req, start: int, n: int, token_offset: int) -> list[ImageSlice]:
    """The image positions among `req`'s tokens [start, start + n), which sit in the batch
    from `token_offset` on."""
    out = []
    end = start + n
    for image in req.images:
        row = 0
        for pos, length in image.runs:
            lo, hi = max(pos, start), min(pos + length, end)
            if lo < hi:
                out.append(ImageSlice(token_offset + lo - start, image, row + lo - pos, hi - lo))
            row += length
    return out
