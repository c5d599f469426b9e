from types import SimpleNamespace

import pytest

from minisgl.cache.pool import PagePool
from minisgl.cache.radix import RadixCache


def knobs(**kw):
    base = dict(prefix_cache_max_tokens=1 << 20, prefix_cache_token_budget=1 << 20, prefix_cache_size=1 << 20,
                prefill_cache_size=0, prefill_cache_token_budget=0)
    base.update(kw)
    return SimpleNamespace(**base)


def test_match_insert_split_and_dedup():
    c = RadixCache(1, knobs())
    present, free = c.insert([1, 2, 3, 4], [10, 11, 12, 13])
    assert (present, free) == (0, [])
    m = c.match_prefix([1, 2, 9])
    assert (m.length, m.slots) == (2, [10, 11])
    # a second copy of [1, 2] comes back to the caller; the new tail is kept
    present, free = c.insert([1, 2, 5], [20, 21, 22])
    assert present == 2 and free == [20, 21]
    assert c.match_len([1, 2, 5, 7]) == 3 and c.total_tokens == 5


def test_page_granularity():
    c = RadixCache(2, knobs())
    c.insert([1, 2, 3, 4], [0, 1, 2, 3])
    assert c.match_prefix([1, 2, 3, 9]).length == 2  # half a page never matches
    assert c.match_prefix([1, 2, 3]).length == 2


def test_locked_prefixes_survive_eviction_lru_order():
    c = RadixCache(1, knobs())
    c.insert([1, 2], [0, 1])
    c.insert([3, 4], [2, 3])
    c.insert([5, 6], [4, 5])
    m = c.match_prefix([1, 2])
    c.lock(m.handle)
    c.match_prefix([5, 6])  # now [3, 4] is the least recently used
    assert sorted(c.evict(1)) == [2, 3]
    assert sorted(c.flush()) == [4, 5]
    assert c.locked_tokens == 2 and c.cached_slots() == [0, 1]
    c.unlock(m.handle)
    assert sorted(c.flush()) == [0, 1] and c.total_tokens == 0
    with pytest.raises(AssertionError):
        c.unlock(m.handle)


def test_knobs_leaf_count_budget_and_max_tokens():
    c = RadixCache(1, knobs(prefix_cache_size=2))
    freed = []
    for i in range(4):
        freed += c.insert([100 + i, 1], [2 * i, 2 * i + 1])[1]
    assert c.stats()["leaves"] == 2 and sorted(freed) == [0, 1, 2, 3]
    c = RadixCache(1, knobs(prefix_cache_token_budget=5))
    for i in range(4):
        c.insert([100 + i, 1], [2 * i, 2 * i + 1])
    assert c.total_tokens <= 5
    c = RadixCache(1, knobs(prefix_cache_max_tokens=3))
    present, free = c.insert([1, 2, 3, 4, 5], [0, 1, 2, 3, 4])
    assert free == [3, 4] and c.total_tokens == 3


def test_prompt_entries_survive_the_leaf_limit():
    c = RadixCache(1, knobs(prefix_cache_size=0, prefill_cache_size=1, prefill_cache_token_budget=100))
    _, freed = c.insert([1, 2, 3, 7, 8], [0, 1, 2, 3, 4], prompt_len=4)
    # the generated tail goes, the prompt (all but its last token) stays for an exact repeat
    assert sorted(freed) == [3, 4] and c.match_len([1, 2, 3, 7]) == 3


def test_pool_double_free_detected():
    pool = PagePool(8, 2)
    pages = pool.alloc(2)
    pool.free(pages)
    with pytest.raises(AssertionError):
        pool.free(pages[:1])
