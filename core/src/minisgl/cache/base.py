"""The prefix-cache protocol the scheduler codes against (`--cache-type` plugins).

A cache maps token-id prefixes to the KV slots that already hold them. The scheduler
matches a prompt, locks what it matched while the request runs (locked entries are never
evicted), inserts a finished request's tokens, and asks the cache to give slots back when
the pool runs short. Everything is in whole pages: matches and inserts are multiples of
the page size, so freed slots always form whole pages of the pool.

A cache that can sit above the hierarchical cache's tiers (cache/tiers.py) has an
`on_evict` attribute: called with (the tokens through an evicted entry, its slots) before
an eviction under pressure hands the slots back (not on `flush`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

CacheHandle = Any  # opaque: what match/insert return and lock/unlock take (a node of the tree)


@dataclass
class MatchResult:
    handle: CacheHandle  # lock this while the slots are in use
    slots: list[int]  # KV slots of the matched prefix, position by position
    length: int  # matched tokens (a multiple of the page size)


@runtime_checkable
class PrefixCache(Protocol):
    page_size: int

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult: ...

    def match_len(self, token_ids: Sequence[int]) -> int:
        """Read-only prefix match length (no LRU touch): for queue and dispatch policies."""
        ...

    def lock(self, handle: CacheHandle) -> None: ...

    def unlock(self, handle: CacheHandle) -> None: ...

    def insert(self, token_ids: Sequence[int], slots: Sequence[int], *, prompt_len: int | None = None) -> tuple[int, list[int]]:
        """Insert a prefix (length a multiple of the page size) with its slots. Returns
        (tokens that were already cached, slots the caller must free: the caller's copies of
        tokens the cache already had, or tokens the cache declined to keep)."""
        ...

    def evict(self, num_tokens: int) -> list[int]:
        """Free at least `num_tokens` unlocked slots if possible (LRU); returns them."""
        ...

    def flush(self) -> list[int]:
        """Drop every unlocked entry; returns the freed slots."""
        ...

    def cached_slots(self) -> list[int]:
        """Every slot the cache holds (locked or not), for the pool invariant."""
        ...

    @property
    def evictable_tokens(self) -> int: ...

    @property
    def locked_tokens(self) -> int: ...

    @property
    def total_tokens(self) -> int: ...

    def stats(self) -> dict[str, int]: ...
