"""PrefixTracker: the server-side approximate radix tree of one replica's cache."""

from __future__ import annotations

import threading

import pytest

from minisgl.dispatch import PrefixTracker


def test_empty_tracker_matches_nothing():
    tracker = PrefixTracker()
    assert tracker.match_len([1, 2, 3]) == 0
    assert tracker.match_len([]) == 0
    assert tracker.num_tokens == 0


def test_match_is_the_longest_common_prefix_across_branches():
    tracker = PrefixTracker()
    tracker.insert([1, 2, 3, 4])
    tracker.insert([1, 2, 5, 6, 7])
    assert tracker.match_len([1, 2, 3, 4, 9]) == 4
    assert tracker.match_len([1, 2, 5, 9]) == 3
    assert tracker.match_len([1, 9]) == 1
    assert tracker.match_len([2, 1]) == 0
    assert tracker.match_len([1, 2]) == 2  # a query shorter than what is held
    assert tracker.num_tokens == 7  # [1,2] shared once, then [3,4] and [5,6,7]


def test_inserting_a_known_prefix_adds_no_tokens():
    tracker = PrefixTracker()
    tracker.insert([1, 2, 3, 4])
    tracker.insert([1, 2])
    tracker.insert([1, 2, 3, 4])
    assert tracker.num_tokens == 4
    assert tracker.match_len([1, 2, 3, 4]) == 4


def test_budget_evicts_least_recently_inserted_first():
    tracker = PrefixTracker(max_tokens=8)
    tracker.insert([1, 1, 1, 1])  # oldest
    tracker.insert([2, 2, 2, 2])
    tracker.insert([1, 1, 1, 1])  # refreshed: now [2...] is the oldest
    tracker.insert([3, 3, 3, 3])
    assert tracker.num_tokens == 8
    assert tracker.match_len([1, 1, 1, 1]) == 4
    assert tracker.match_len([3, 3, 3, 3]) == 4
    assert tracker.match_len([2, 2, 2, 2]) == 0


def test_eviction_trims_the_tail_and_keeps_the_shared_head():
    tracker = PrefixTracker(max_tokens=10)
    tracker.insert([7, 7, 1, 2, 3])
    tracker.insert([7, 7, 4, 5, 6])
    tracker.insert([9, 9, 9])  # 2 + 3 + 3 + 3 = 11 > 10: one token goes from the LRU leaf
    assert tracker.num_tokens == 10
    assert tracker.match_len([7, 7, 1, 2, 3]) == 4
    assert tracker.match_len([7, 7, 4, 5, 6]) == 5
    assert tracker.match_len([9, 9, 9]) == 3


def test_parent_becomes_evictable_after_its_children_go():
    tracker = PrefixTracker(max_tokens=6)
    tracker.insert([1, 2, 3])
    tracker.insert([1, 2, 4])  # tree: [1,2] -> [3], [4]
    tracker.insert([5, 6, 7, 8, 9, 10])  # needs all 6 tokens: everything older goes
    assert tracker.match_len([1, 2, 3]) == 0
    assert tracker.match_len([5, 6, 7, 8, 9, 10]) == 6
    assert tracker.num_tokens == 6


def test_a_prompt_longer_than_the_budget_keeps_its_head():
    tracker = PrefixTracker(max_tokens=5)
    tracker.insert(list(range(12)))
    assert tracker.num_tokens == 5
    assert tracker.match_len(list(range(12))) == 5


def test_clear_forgets_everything():
    tracker = PrefixTracker()
    tracker.insert([1, 2, 3])
    tracker.clear()
    assert tracker.num_tokens == 0
    assert tracker.match_len([1, 2, 3]) == 0


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_tokens"):
        PrefixTracker(max_tokens=0)


def test_concurrent_inserts_keep_the_tree_consistent():
    tracker = PrefixTracker(max_tokens=200)

    def worker(seed: int) -> None:
        for i in range(200):
            tracker.insert([seed, i % 7, i % 5, i])

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stack, total = [tracker._root], 0
    while stack:
        node = stack.pop()
        total += len(node.key)
        stack.extend(node.children.values())
    assert total == tracker.num_tokens <= 200
