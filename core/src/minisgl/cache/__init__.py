"""KV memory as indices: the page pool and the prefix caches (radix, naive) over it."""

from .base import CacheHandle, MatchResult, PrefixCache
from .pool import PagePool

__all__ = ["CacheHandle", "MatchResult", "PagePool", "PrefixCache"]
