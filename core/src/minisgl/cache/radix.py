"""`--cache-type radix` (default): a radix tree over token ids whose values are KV slots.

Requests that share a prefix (a system prompt, a chat history, a repeated prompt) share
the slots of that prefix instead of computing it again. Edges hold whole pages of
`page_size` tokens and a page matches only when all its tokens do, so every node owns
whole pool pages.

Lock references: the scheduler locks the node it matched for as long as the request
runs; a lock holds the whole path to the root. Only unlocked leaves are evicted, least
recently used first.

The original mini-sglang's cache knobs (README, Settings), all mapped onto this one tree.
There they sized a small side cache; here the tree is the KV pool itself, so the three
PREFIX_CACHE_* limits are unset (None) by default and the tree is bounded by the pool
alone, as in sglang. Set, they work as follows:
- PREFIX_CACHE=0: no tree at all (`--cache-type naive`, done in settings).
- PREFIX_CACHE_MAX_TOKENS: at most this many leading tokens of a sequence are inserted
  (the prefix that other requests may share); the rest goes back to the pool.
- PREFIX_CACHE_TOKEN_BUDGET: tokens the tree keeps once no running request needs them
  (unlocked); above it, LRU leaves go at once, before the pool is short.
- PREFIX_CACHE_SIZE: cached leaves (distinct unlocked prefixes) kept; 0 keeps none.
- PREFILL_CACHE_SIZE / PREFILL_CACHE_TOKEN_BUDGET (its exact-prompt cache): the
  most recent PREFILL_CACHE_SIZE prompts, of at most PREFILL_CACHE_TOKEN_BUDGET tokens in
  all, are "prompt entries": a node ends exactly where each prompt ends, and those nodes
  are exempt from the two limits above (only a short pool evicts them). A repeated prompt
  then matches all of itself but its last token, which must run to give the logits.
Pool pressure (`evict`) ignores every knob: any unlocked leaf may go, LRU first.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .base import MatchResult


def _or(value: int | None, unset: int) -> int:
    return unset if value is None else value


class _Node:
    __slots__ = ("key", "slots", "children", "parent", "lock_ref", "last_access", "prompt_entry")

    def __init__(self, key: list[int], slots: list[int], parent: _Node | None) -> None:
        self.key = key
        self.slots = slots
        self.children: dict[tuple[int, ...], _Node] = {}
        self.parent = parent
        self.lock_ref = 0
        self.last_access = 0
        self.prompt_entry = False

    def __lt__(self, other: _Node) -> bool:  # heap order: least recently used first
        return self.last_access < other.last_access


class RadixCache:
    def __init__(self, page_size: int, settings: Any) -> None:
        """The knobs are `settings`' PREFIX_CACHE_* and PREFILL_CACHE_* (defaults: minisgl.settings)."""
        self.page_size = page_size
        unset = 1 << 62  # a knob left unset: only the pool bounds the tree
        max_tokens = _or(settings.prefix_cache_max_tokens, unset)
        self.max_insert_tokens = max_tokens // page_size * page_size
        self.token_budget = _or(settings.prefix_cache_token_budget, unset)
        self.max_leaves = _or(settings.prefix_cache_size, unset)
        self.limited = settings.prefix_cache_size is not None or settings.prefix_cache_token_budget is not None
        self.prompt_entries_max = settings.prefill_cache_size
        self.prompt_entries_budget = settings.prefill_cache_token_budget
        self.root = _Node([], [], None)
        self.root.lock_ref = 1  # never evicted
        self._clock = itertools.count(1)
        self._evictable = 0
        self._locked = 0
        self._prompt_entries: OrderedDict[_Node, int] = OrderedDict()  # node -> depth
        # called with (the tokens up to and through an evicted leaf, the leaf's slots) before
        # its slots go back: the hierarchical cache copies the pages to its tiers
        self.on_evict: Any = None

    # ---- lookups ------------------------------------------------------------------
    def _page(self, tokens: Sequence[int], start: int) -> tuple[int, ...]:
        return tuple(tokens[start : start + self.page_size])

    def _common(self, key: list[int], tokens: Sequence[int], start: int) -> int:
        """Matching length of `key` against tokens[start:], in whole pages."""
        P = self.page_size
        n = min(len(key), len(tokens) - start) // P * P
        i = 0
        while i < n and key[i : i + P] == list(tokens[start + i : start + i + P]):
            i += P
        return i

    def _split(self, child: _Node, at: int) -> _Node:
        """Cut `child`'s edge after `at` tokens; returns the new upper node."""
        parent = child.parent
        assert parent is not None
        upper = _Node(child.key[:at], child.slots[:at], parent)
        upper.lock_ref = child.lock_ref
        upper.last_access = child.last_access
        parent.children[self._page(upper.key, 0)] = upper
        child.key, child.slots = child.key[at:], child.slots[at:]
        child.parent = upper
        upper.children[self._page(child.key, 0)] = child
        return upper

    def _walk(self, tokens: Sequence[int], touch: bool, split: bool) -> tuple[_Node, list[int], int]:
        node, slots, i = self.root, [], 0
        now = next(self._clock) if touch else 0
        limit = len(tokens) // self.page_size * self.page_size
        while i < limit:
            child = node.children.get(self._page(tokens, i))
            if child is None:
                break
            m = self._common(child.key, tokens, i)
            if m < len(child.key):
                if not split:
                    slots.extend(child.slots[:m])
                    i += m
                    break
                child = self._split(child, m)
            node = child
            if touch:
                node.last_access = now
            slots.extend(node.slots)
            i += len(node.key)
        return node, slots, i

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        node, slots, length = self._walk(token_ids, touch=True, split=True)
        return MatchResult(handle=node, slots=slots, length=length)

    def match_len(self, token_ids: Sequence[int]) -> int:
        """Read-only: how many leading tokens are cached (no split, no LRU touch)."""
        return self._walk(token_ids, touch=False, split=False)[2]

    # ---- locks --------------------------------------------------------------------
    def lock(self, handle: _Node | None) -> None:
        node = handle
        while node is not None and node is not self.root:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._locked += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, handle: _Node | None) -> None:
        node = handle
        while node is not None and node is not self.root:
            if node.lock_ref <= 0:
                raise AssertionError("radix cache: unlock of an unlocked node")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable += len(node.key)
                self._locked -= len(node.key)
            node = node.parent

    # ---- insert -------------------------------------------------------------------
    def insert(self, token_ids: Sequence[int], slots: Sequence[int], *, prompt_len: int | None = None) -> tuple[int, list[int]]:
        P = self.page_size
        if len(token_ids) != len(slots) or len(slots) % P:
            raise AssertionError(f"insert of {len(token_ids)} tokens with {len(slots)} slots (page size {P})")
        keep = min(len(slots), self.max_insert_tokens)
        to_free = list(slots[keep:])
        tokens = list(token_ids[:keep])
        now = next(self._clock)
        node, i, present = self.root, 0, 0
        while i < keep:
            child = node.children.get(self._page(tokens, i))
            if child is None:
                new = _Node(tokens[i:], list(slots[i:keep]), node)
                new.last_access = now
                node.children[self._page(tokens, i)] = new
                self._evictable += len(new.key)
                node = new
                break
            m = self._common(child.key, tokens, i)
            if m < len(child.key):
                child = self._split(child, m)
            # the caller's copies of tokens the tree already has go back to the pool
            to_free.extend(s for s, c in zip(slots[i : i + m], child.slots) if s != c)
            present += m
            node = child
            node.last_access = now
            i += m
        if prompt_len is not None:
            self._mark_prompt_entry(tokens, (prompt_len - 1) // P * P)
        to_free.extend(self._enforce_limits())
        return present, to_free

    def _mark_prompt_entry(self, tokens: list[int], depth: int) -> None:
        if self.prompt_entries_max <= 0 or depth <= 0 or depth > len(tokens) or depth > self.prompt_entries_budget:
            return
        node, _, length = self._walk(tokens[:depth], touch=False, split=True)
        if length != depth:
            return
        node.prompt_entry = True
        self._prompt_entries[node] = depth
        self._prompt_entries.move_to_end(node)
        while len(self._prompt_entries) > self.prompt_entries_max or sum(self._prompt_entries.values()) > self.prompt_entries_budget:
            old, _ = self._prompt_entries.popitem(last=False)
            old.prompt_entry = False

    # ---- eviction -----------------------------------------------------------------
    def _nodes(self) -> list[_Node]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def _delete(self, leaf: _Node) -> list[int]:
        parent = leaf.parent
        assert parent is not None and not leaf.children and leaf.lock_ref == 0
        del parent.children[self._page(leaf.key, 0)]
        self._evictable -= len(leaf.key)
        if leaf.prompt_entry:
            self._prompt_entries.pop(leaf, None)
        return leaf.slots

    def _path_tokens(self, node: _Node) -> list[int]:
        parts = []
        while node is not None and node is not self.root:
            parts.append(node.key)
            node = node.parent
        return [t for part in reversed(parts) for t in part]

    def _evict_leaves(self, done: Any, skip_protected: bool, report: bool = True) -> list[int]:
        """Delete unlocked leaves, LRU first, until `done(freed_so_far)` is true."""
        heap = [n for n in self._nodes() if not n.children and n.lock_ref == 0 and n is not self.root]
        heapq.heapify(heap)
        freed: list[int] = []
        while heap and not done(freed):
            leaf = heapq.heappop(heap)
            if skip_protected and leaf.prompt_entry:
                continue
            if report and self.on_evict is not None:
                self.on_evict(self._path_tokens(leaf), leaf.slots)
            freed.extend(self._delete(leaf))
            parent = leaf.parent
            if parent is not None and parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, parent)
        return freed

    def _enforce_limits(self) -> list[int]:
        if not self.limited:
            return []  # a walk over the whole tree on every insert, for limits nobody set
        def within(_: list[int]) -> bool:
            leaves = sum(1 for n in self._nodes() if not n.children and n.lock_ref == 0 and n is not self.root and not n.prompt_entry)
            protected = sum(self._prompt_entries.values())
            return leaves <= self.max_leaves and self._evictable <= self.token_budget + protected

        return self._evict_leaves(within, skip_protected=True)

    def evict(self, num_tokens: int) -> list[int]:
        return self._evict_leaves(lambda freed: len(freed) >= num_tokens, skip_protected=False)

    def flush(self) -> list[int]:
        return self._evict_leaves(lambda _: False, skip_protected=False, report=False)

    # ---- accounting ---------------------------------------------------------------
    def cached_slots(self) -> list[int]:
        return [s for n in self._nodes() for s in n.slots]

    @property
    def evictable_tokens(self) -> int:
        return self._evictable

    @property
    def locked_tokens(self) -> int:
        return self._locked

    @property
    def total_tokens(self) -> int:
        return self._evictable + self._locked

    def stats(self) -> dict[str, int]:
        nodes = self._nodes()
        return {
            "nodes": len(nodes) - 1,
            "leaves": sum(1 for n in nodes if not n.children and n is not self.root),
            "prompt_entries": len(self._prompt_entries),
        }
