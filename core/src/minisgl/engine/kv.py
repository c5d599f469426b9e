"""The KV a request holds: pages of the pool, a locked prefix of the cache, a page-table row.

A running request's positions [0, cached_len) are a prefix the cache holds (locked while
the request runs); the rest are private pages. `slots` maps every allocated position to
its pool slot, and the same slots sit in the request's row of the page table that every
forward reads. Page-table writes gather here during a step and reach the device in one
copy (`flush`).
"""

from __future__ import annotations

from collections import Counter

import torch

from ..cache.base import MatchResult, PrefixCache
from ..cache.pool import PagePool
from ..cache.tiers import KVTiers
from .batch import to_device
from .request import Req


class KVManager:
    def __init__(self, num_slots: int, page_size: int, cache: PrefixCache, rows: int, width: int,
                 device: torch.device, counters: Counter[str], tiers: KVTiers | None = None) -> None:
        self.P = page_size
        self.pool = PagePool(num_slots, page_size)
        self.cache = cache
        self.device = device
        self.page_table = torch.zeros(rows, width, dtype=torch.int64, device=device)
        self._free_rows = list(range(rows - 1, -1, -1))
        self._writes: list[tuple[int, int, int]] = []  # (row, position, slot), flushed once a step
        self.counters = counters
        self.tiers = tiers
        if tiers is not None:
            cache.on_evict = tiers.store  # type: ignore[attr-defined]

    @property
    def free_rows(self) -> int:
        return len(self._free_rows)

    def pages_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.P)

    def ensure_free_pages(self, n: int) -> bool:
        """Make `n` pages free, evicting unlocked cached prefixes if needed."""
        short = n - self.pool.free_pages
        if short > 0:
            freed = self.cache.evict(short * self.P)
            if freed:
                self.counters["evicted_tokens_total"] += len(freed)
                self.pool.free_slots(freed)
        return self.pool.free_pages >= n

    def admit(self, req: Req) -> int | None:
        """Give `req` a row, its longest cached prefix (locked) and pages for all its tokens;
        the matched length, or None when the pool cannot hold it (nothing taken)."""
        # the last token stays out of the match: it must run to give the logits; a pooling
        # request matches nothing, since it needs the hidden state of every position it pools
        prefix = req.all_ids[: len(req.all_ids) - 1] if req.pooling is None else []
        match = self.cache.match_prefix(prefix)
        self.cache.lock(match.handle)
        if not self.ensure_free_pages(self.pages_for(len(req.all_ids)) - match.length // self.P):
            self.cache.unlock(match.handle)
            return None
        if self.tiers is not None:
            match = self._load_from_tiers(prefix, match)
            if not self.ensure_free_pages(self.pages_for(len(req.all_ids)) - match.length // self.P):
                self.cache.unlock(match.handle)
                return None
        req.cache_handle, req.cached_len = match.handle, match.length
        req.slots = list(match.slots)
        req.kv_len = match.length
        req.row = self._free_rows.pop()
        self._writes.extend((req.row, i, s) for i, s in enumerate(match.slots))
        self.grow(req, len(req.all_ids))
        return match.length

    def _load_from_tiers(self, prefix: list[int], match: MatchResult) -> MatchResult:
        """Extend the locked `match` with the pages that follow it in the tiers: written into
        free pool pages and inserted into the cache; returns the new match, locked. The
        pages come out of what the request would take anyway, which the caller made free."""
        pages = self.tiers.load(prefix, match.length) if self.tiers is not None else []
        pages = pages[: self.pool.free_pages]
        if not pages:
            return match
        new_slots = self.pool.slots_of(self.pool.alloc(len(pages)))
        self.tiers.write(new_slots, pages)  # type: ignore[union-attr]
        end = match.length + len(new_slots)
        _, to_free = self.cache.insert(prefix[:end], list(match.slots) + new_slots)
        self.cache.unlock(match.handle)
        # what the cache's limits refused or evicted to make room goes back to the pool
        self.pool.free_slots(to_free)
        extended = self.cache.match_prefix(prefix)
        self.cache.lock(extended.handle)
        return extended

    def pages_short(self, req: Req, n_tokens: int) -> int:
        """Pages `req` lacks to hold positions [0, n_tokens)."""
        return max(0, self.pages_for(n_tokens) - len(req.slots) // self.P)

    def grow(self, req: Req, n_tokens: int) -> None:
        """Slots for positions [0, n_tokens) (the pages must be free)."""
        need = self.pages_for(n_tokens) - len(req.slots) // self.P
        if need <= 0:
            return
        pages = self.pool.alloc(need)
        start = len(req.slots)
        new_slots = self.pool.slots_of(pages)
        req.private_pages.extend(pages)
        req.slots.extend(new_slots)
        self._writes.extend((req.row, start + i, s) for i, s in enumerate(new_slots))

    def release(self, req: Req, keep_in_cache: bool) -> None:
        """Give back everything `req` holds; with `keep_in_cache` its computed whole pages go
        to the prefix cache (what was new there counts for a warm request)."""
        if req.row < 0:
            return
        self.cache.unlock(req.cache_handle)
        # an in-flight token's K/V may be in the pool while its id is not known yet
        aligned = req.computed_ids // self.P * self.P
        if keep_in_cache and aligned > 0:
            present, to_free = self.cache.insert(req.all_ids[:aligned], req.slots[:aligned],
                                                 prompt_len=len(req.prompt_ids))
            if self.tiers is not None and self.tiers.write_through and aligned > present:
                self.tiers.store(req.all_ids[:aligned], req.slots[present:aligned])
            if req.warm_only:
                req.warm_tokens += aligned - present
            to_free = to_free + req.slots[aligned:]
        else:
            to_free = req.slots[req.cached_len :]
        self.pool.free_slots(to_free)
        self.page_table[req.row].zero_()
        self._free_rows.append(req.row)
        req.row, req.slots, req.private_pages = -1, [], []
        req.cache_handle, req.cached_len, req.kv_len = None, 0, 0

    def truncate(self, req: Req, length: int) -> None:
        """Forget `req`'s K/V past `length` tokens (rejected draft tokens): kv_len drops to
        it and the private pages wholly beyond it go back to the pool."""
        if not req.cached_len <= length <= req.kv_len:
            raise ValueError(f"request {req.rid}: cannot truncate its KV to {length} tokens "
                             f"(cached prefix {req.cached_len}, computed {req.kv_len})")
        req.kv_len = length
        keep = max(self.pages_for(length), req.cached_len // self.P)
        drop = req.slots[keep * self.P :]
        if drop:
            pages = self.pool.pages_of(drop)
            dropped = set(pages)
            req.private_pages = [p for p in req.private_pages if p not in dropped]
            del req.slots[keep * self.P :]
            self.pool.free(pages)

    def flush(self) -> None:
        """The step's page-table writes, in one device copy."""
        if self._writes:
            rows, cols, slots = zip(*self._writes)
            self._writes = []
            t = self.device
            self.page_table.index_put_((to_device(rows, t), to_device(cols, t)), to_device(slots, t))

    def table_rows(self, reqs: list[Req], width: int) -> torch.Tensor:
        return self.page_table.index_select(0, to_device([r.row for r in reqs], self.device))[:, :width]

    def used_tokens(self, running: list[Req]) -> int:
        """Slots held privately by running requests."""
        return sum(len(r.slots) - r.cached_len for r in running)

    def flush_cache(self) -> int:
        freed = self.cache.flush()
        self.pool.free_slots(freed)
        return len(freed)

    def check(self, running: list[Req], waiting: list[Req]) -> None:
        """Every page is free, held by one running request, or held by the cache, once."""
        owner: dict[int, str] = {}

        def claim(pages: list[int], who: str) -> None:
            for p in pages:
                if p in owner:
                    raise AssertionError(f"KV page {p} is held by {owner[p]} and by {who}")
                owner[p] = who

        claim(self.pool.free_page_ids(), "the free list")
        claim(self.pool.pages_of(self.cache.cached_slots()), "the prefix cache")
        for req in running:
            if sorted(self.pool.pages_of(req.slots[req.cached_len :])) != sorted(req.private_pages):
                raise AssertionError(f"request {req.rid}: slots and private pages disagree")
            if req.row < 0 or req.kv_len > len(req.slots):
                raise AssertionError(f"request {req.rid}: kv_len {req.kv_len} beyond its {len(req.slots)} slots")
            claim(req.private_pages, f"request {req.rid}")
        for req in waiting:
            if req.row >= 0 or req.slots or req.cache_handle is not None:
                raise AssertionError(f"waiting request {req.rid} still holds KV")
        missing = set(range(self.pool.num_pages)) - set(owner)
        if missing:
            raise AssertionError(f"KV pages leaked (held by nobody): {sorted(missing)[:16]}")
        if len(self._free_rows) + len(running) != self.page_table.shape[0]:
            raise AssertionError("page-table rows leaked")
        if self.cache.total_tokens != len(self.cache.cached_slots()):
            raise AssertionError("prefix cache token accounting is off")
        if not running and self.cache.locked_tokens != 0:
            raise AssertionError(f"{self.cache.locked_tokens} cached tokens locked with no running request")
        if self.tiers is not None:
            self.tiers.check()
