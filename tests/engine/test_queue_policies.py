"""The lpm and priority queue policies: as units on constructed waiting requests, and through an
Engine where max_running_requests=1 makes the admission order the completion order."""

import pytest
from engine_helpers import prompts

from minisgl import SamplingParams
from minisgl.engine.messages import EngineRequest
from minisgl.engine.queue_policy import FCFS
from minisgl.engine.request import Req
from minisgl_schedulers.queue import LongestPrefixMatch, Priority


def view(rid, tokens=(1, 2, 3), priority=0, arrival=0.0, seq=0, retracted=False):
    return Req(rid=rid, prompt_ids=list(tokens), params=SamplingParams(max_new_tokens=1), max_new_tokens=1,
               stop_ids=frozenset(), priority=priority, arrival_time=arrival, seq=seq, num_retractions=int(retracted))


def test_lpm_orders_by_cached_prefix_then_arrival_retracted_first():
    cached = {(1,): 0, (2,): 16, (3,): 4, (4,): 16, (5,): 0}
    match = lambda ids: cached[tuple(ids)]  # noqa: E731
    waiting = [
        view("none", (1,), arrival=1.0, seq=0),
        view("long-late", (4,), arrival=5.0, seq=3),
        view("long", (2,), arrival=2.0, seq=1),
        view("short", (3,), arrival=3.0, seq=2),
        view("retracted", (5,), arrival=9.0, seq=4, retracted=True),
    ]
    order = [w.rid for w in LongestPrefixMatch().order(waiting, match)]
    assert order == ["retracted", "long", "long-late", "short", "none"]


def test_priority_orders_by_priority_then_arrival():
    waiting = [
        view("low", priority=-1, arrival=0.5, seq=0),
        view("mid", priority=0, arrival=1.0, seq=1),
        view("high-late", priority=5, arrival=3.0, seq=3),
        view("high", priority=5, arrival=2.0, seq=2),
        view("high-tie", priority=5, arrival=2.0, seq=4),
    ]
    order = [w.rid for w in Priority().order(waiting, lambda ids: 0)]
    assert order == ["high", "high-tie", "high-late", "mid", "low"]
    assert [w.rid for w in FCFS().order(waiting, lambda ids: 0)] == ["low", "mid", "high", "high-tie", "high-late"]


def admission_order(eng, requests) -> list[str]:
    """Rids in the order they first produced a token (max_running_requests=1: admission order)."""
    for r in requests:
        eng.add_request(r)
    first: list[str] = []
    while eng.has_work():
        for o in eng.step():
            if o.new_token_ids and o.rid not in first:
                first.append(o.rid)
        eng.check_invariants()
    return first


GREEDY = SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("policy", ["lpm", "fcfs"])
def test_lpm_admits_longest_cached_prefix_first(engine_factory, tiny_qwen3_path, policy):
    eng = engine_factory(tiny_qwen3_path, queue_policy=policy, max_running_requests=1, page_size=4)
    long_prefix, short_prefix, tails = *prompts(eng.runner.vocab_size, (16, 8)), prompts(eng.runner.vocab_size, (5, 5, 21), seed=1)
    eng.warm([long_prefix, short_prefix])
    reqs = [
        EngineRequest(rid="cold", input_ids=tails[2], sampling=GREEDY),
        EngineRequest(rid="short", input_ids=short_prefix + tails[1], sampling=GREEDY),
        EngineRequest(rid="long", input_ids=long_prefix + tails[0], sampling=GREEDY),
    ]
    order = admission_order(eng, reqs)
    assert order == (["long", "short", "cold"] if policy == "lpm" else ["cold", "short", "long"])


def test_priority_admits_highest_priority_first(engine_factory, tiny_qwen3_path):
    eng = engine_factory(tiny_qwen3_path, queue_policy="priority", max_running_requests=1)
    ps = prompts(eng.runner.vocab_size, (4, 6, 5, 7))
    reqs = [
        EngineRequest(rid="p0", input_ids=ps[0], sampling=GREEDY, priority=0),
        EngineRequest(rid="p5", input_ids=ps[1], sampling=GREEDY, priority=5),
        EngineRequest(rid="p-1", input_ids=ps[2], sampling=GREEDY, priority=-1),
        EngineRequest(rid="p5-later", input_ids=ps[3], sampling=GREEDY, priority=5),
    ]
    assert admission_order(eng, reqs) == ["p5", "p5-later", "p0", "p-1"]
    assert eng.metrics()["queue_policy"] == "priority"
