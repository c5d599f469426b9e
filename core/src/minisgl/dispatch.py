"""Dispatch policies choose which engine replica serves a request (SCHEDULER_MODE).

This is the stable, typed interface third-party scheduler plugins implement. A policy sees
a read-only snapshot of each replica (`ReplicaView`) and the request as it will travel to
the engine (`minisgl.engine.messages.EngineRequest`: rid, input_ids, priority, sampling;
the first of its front-door request, whose other prompts and samples go to the same
replica), never engine internals, and returns the index of the replica to use. The pool only offers
replicas that are healthy and under their inflight caps; a policy may assume `replicas`
is non-empty.

A policy is any object with `choose(request, replicas) -> int`; the registered factory is
called once with no arguments (or with `settings=` if it accepts it) when the pool starts
(`load_dispatch_policy`). The pool should call it through `choose_replica`, which checks
the answer. `PrefixTracker` is the server-side guess of each replica's prefix cache that
answers `ReplicaView.prefix_match_len`.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .engine.messages import EngineRequest
    from .plugins import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaView:
    """What a policy may know about one replica, at the moment of the choice."""

    index: int  # position in the pool (stable for the pool's lifetime)
    inflight: int  # requests dispatched to it and not finished yet
    max_inflight: int  # its cap (MAX_INFLIGHT_PER_ENGINE); 0 = unlimited
    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_total_tokens: int = 0
    kv_used_tokens: int = 0
    # How many leading tokens of a prompt this replica's prefix cache likely holds.
    _prefix_match: Callable[[Sequence[int]], int] = field(default=lambda ids: 0, repr=False)
    # The same for its hierarchical cache's host and disk tiers (0 while they are off).
    _tier_match: Callable[[Sequence[int]], int] = field(default=lambda ids: 0, repr=False)

    def prefix_match_len(self, token_ids: Sequence[int]) -> int:
        """Leading tokens of the prompt its device prefix cache likely holds (free to reuse)."""
        return self._prefix_match(token_ids)

    def tier_match_len(self, token_ids: Sequence[int]) -> int:
        """Leading tokens it likely holds in its host-memory or disk tier: it serves them by
        copying them back into the device pool before the prefill (cheaper than recomputing
        them, dearer than a device match)."""
        return self._tier_match(token_ids)

    @property
    def free_slots(self) -> int | None:
        """Requests it may still take before its cap; None when uncapped."""
        return None if self.max_inflight <= 0 else max(0, self.max_inflight - self.inflight)


@runtime_checkable
class DispatchPolicy(Protocol):
    def choose(self, request: EngineRequest, replicas: Sequence[ReplicaView]) -> int:
        """Return `index` of one of `replicas`."""
        ...


class RoundRobin:
    """rr: each request to the next replica in index order, skipping those not offered
    (dead or at their cap), so a replica that comes back rejoins its turn."""

    name = "rr"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, request: EngineRequest, replicas: Sequence[ReplicaView]) -> int:
        ordered = sorted(r.index for r in replicas)
        pick = next((i for i in ordered if i >= self._next), ordered[0])
        self._next = pick + 1
        return pick


class PrefixTracker:
    """The server's guess of what one replica's prefix cache holds (sglang router's
    approximate tree): a radix tree over the token ids dispatched to that replica.

    The pool `insert`s each request's prompt into the tracker of the replica it chose, and
    `ReplicaView.prefix_match_len` asks `match_len`, so cache-aware policies need no round
    trip to the engine process. It is an approximation: the engine may have evicted what
    we remember, or cached output tokens we never saw. A token budget bounds memory;
    beyond it the least recently inserted leaves are trimmed first (LRU), as the engine's
    radix cache would. Safe to call from several threads.
    """

    def __init__(self, max_tokens: int = 32768) -> None:
        if max_tokens < 1:
            raise ValueError(f"PrefixTracker max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self._clock = itertools.count(1)  # logical time: deterministic LRU order
        self._lock = threading.Lock()
        self._root = _Node((), None, 0)
        self._num_tokens = 0

    @property
    def num_tokens(self) -> int:
        """Tokens held (the sum of edge lengths), never above `max_tokens`."""
        return self._num_tokens

    def match_len(self, token_ids: Sequence[int]) -> int:
        """Length of the longest prefix of `token_ids` held; does not refresh LRU order."""
        ids = tuple(token_ids)
        with self._lock:
            node, matched = self._root, 0
            while matched < len(ids):
                child = node.children.get(ids[matched])
                if child is None:
                    break
                common = _common_prefix_len(child.key, ids, matched)
                matched += common
                if common < len(child.key):
                    break
                node = child
            return matched

    def insert(self, token_ids: Sequence[int]) -> None:
        """Record that the replica now (likely) caches `token_ids`; refreshes their LRU
        time and evicts older leaves if the budget is exceeded."""
        ids = tuple(token_ids)[: self.max_tokens]  # a prefix is what later requests share
        with self._lock:
            now = next(self._clock)
            node, pos = self._root, 0
            node.last_access = now
            while pos < len(ids):
                child = node.children.get(ids[pos])
                if child is None:
                    leaf = _Node(ids[pos:], node, now)
                    node.children[ids[pos]] = leaf
                    self._num_tokens += len(leaf.key)
                    break
                common = _common_prefix_len(child.key, ids, pos)
                if common < len(child.key):
                    child = self._split(child, common)
                child.last_access = now
                pos += common
                node = child
            self._evict_to_budget()

    def clear(self) -> None:
        """Forget everything (the replica flushed its cache, restarted, or died)."""
        with self._lock:
            self._root.children.clear()
            self._num_tokens = 0

    # ---- internals ---------------------------------------------------------------------
    def _split(self, child: _Node, at: int) -> _Node:
        """Cut `child`'s edge after `at` tokens; return the new upper node."""
        parent = child.parent
        assert parent is not None
        upper = _Node(child.key[:at], parent, child.last_access)
        parent.children[upper.key[0]] = upper
        child.key = child.key[at:]
        child.parent = upper
        upper.children[child.key[0]] = child
        return upper

    def _evict_to_budget(self) -> None:
        excess = self._num_tokens - self.max_tokens
        if excess <= 0:
            return
        leaves = [(n.last_access, id(n), n) for n in self._root.iter_nodes() if not n.children]
        heapq.heapify(leaves)
        while excess > 0 and leaves:
            _, _, leaf = heapq.heappop(leaves)
            if leaf is self._root:
                continue
            if len(leaf.key) > excess:  # trim the tail, keep the shared head
                leaf.key = leaf.key[: len(leaf.key) - excess]
                self._num_tokens -= excess
                return
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key[0]]
            self._num_tokens -= len(leaf.key)
            excess -= len(leaf.key)
            if parent is not self._root and not parent.children:
                heapq.heappush(leaves, (parent.last_access, id(parent), parent))


class _Node:
    __slots__ = ("key", "parent", "children", "last_access")

    def __init__(self, key: tuple[int, ...], parent: _Node | None, last_access: int) -> None:
        self.key = key  # the edge's tokens, from the parent to this node
        self.parent = parent
        self.children: dict[int, _Node] = {}  # by the first token of the child's key
        self.last_access = last_access

    def iter_nodes(self) -> Iterator[_Node]:
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())


def _common_prefix_len(key: tuple[int, ...], ids: tuple[int, ...], start: int) -> int:
    n = min(len(key), len(ids) - start)
    i = 0
    while i < n and key[i] == ids[start + i]:
        i += 1
    return i


class DispatchPolicyError(RuntimeError):
    """A registered dispatch policy that could not be started, or made an invalid choice."""


def load_dispatch_policy(name: str, registry: Registry | None = None, settings: Any = None) -> DispatchPolicy:
    """Instantiate the dispatch policy registered as `name` (SCHEDULER_MODE / --scheduler).

    An unknown name raises `PluginError` listing the installed policies. The factory gets
    `settings=` when its signature accepts it, nothing otherwise.
    """
    from .plugins import PluginError, get_registry

    registry = registry if registry is not None else get_registry()
    try:
        spec = registry.get("dispatch_policy", name)
    except PluginError:
        installed = ", ".join(registry.names("dispatch_policy")) or "none"
        hint = "`minisgl plugins` lists what each installed plugin registers"
        if not any(p.distribution == "minisgl-schedulers" for p in registry.plugins.values()):
            hint += "; `pip install minisgl-schedulers` adds fsfs, random and cache_aware"
        raise PluginError(
            f"unknown dispatch policy {name!r} for SCHEDULER_MODE / --scheduler; installed: {installed} ({hint})"
        ) from None
    owner = registry.owner.get(("dispatch_policy", spec.name), "?")
    try:
        factory = spec.load()
        policy = factory(settings=settings) if _accepts_settings(factory) else factory()
    except Exception as exc:
        raise DispatchPolicyError(
            f"dispatch policy {spec.name!r} ({spec.factory_name}, plugin {owner!r}) failed to start: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not callable(getattr(policy, "choose", None)):
        raise DispatchPolicyError(
            f"dispatch policy {spec.name!r} ({spec.factory_name}) built {type(policy).__name__}, "
            "which has no choose(request, replicas) method"
        )
    log.info("dispatch policy %r: %s (plugin %r)", spec.name, spec.description, owner)
    return policy


def choose_replica(policy: DispatchPolicy, request: EngineRequest, replicas: Sequence[ReplicaView]) -> int:
    """Ask `policy` for a replica and check the answer is one of those offered, so that a
    faulty third-party policy fails loudly instead of routing to an excluded replica."""
    if not replicas:
        raise ValueError("choose_replica needs at least one replica to offer")
    index = policy.choose(request, replicas)
    if index not in {r.index for r in replicas}:
        offered = [r.index for r in replicas]
        raise DispatchPolicyError(
            f"dispatch policy {type(policy).__name__} chose replica {index!r}, not among offered {offered}"
        )
    return index


def _accepts_settings(factory: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.name == "settings" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
