"""Warming (insert_prefix) never starves user traffic: warm requests run behind user
requests in the engine loop, so a short user request finishes long before a big warm does,
on the engine alone and through the control plane of a real server."""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from server_process import start_server_with_control

from minisgl import SamplingParams
from minisgl.control.client import ControlClient
from minisgl.engine.messages import EngineRequest

GREEDY = dict(temperature=0.0, ignore_eos=True)


def _engine(model_path: str, overlap: bool = False, **settings):
    """The engine on backend-hf; with `overlap`, behind tests/engine's lazily resolving
    runner, so overlap scheduling (step N+1 launched before N is read) runs on the CPU."""
    from minisgl.engine.engine import Engine
    from minisgl.settings import settings_from_kwargs

    if overlap:
        sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))
        from lazy_runner import make_overlap_engine

        return make_overlap_engine(model_path, **settings)
    return Engine(settings_from_kwargs(model=model_path, dtype="float32", backend="hf", **settings))


def _prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab - 5) for _ in range(n)] for n in lengths]


def _step_until(eng, done, limit: int = 10_000) -> dict[str, list]:
    outs: dict[str, list] = {}
    for _ in range(limit):
        if done(outs):
            return outs
        for o in eng.step():
            outs.setdefault(o.rid, []).append(o)
        eng.check_invariants()
    raise AssertionError("did not finish")


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
def test_a_user_request_finishes_in_a_few_steps_while_a_big_warm_runs(tiny_qwen3_path, overlap):
    # warm steps take at most 1024 / 4 tokens alone, 1024 / 16 beside the user's request
    eng = _engine(tiny_qwen3_path, overlap, max_prefill_length=1024, page_size=4)
    try:
        prefixes = _prompts(eng.runner.vocab_size, [600] * 6)
        pending = eng.warm_async(prefixes)
        assert not pending.done
        eng.add_request(EngineRequest(rid="u", input_ids=[11, 12, 13],
                                      sampling=SamplingParams(max_new_tokens=2, **GREEDY)))
        steps = 0

        def user_done(outs):
            nonlocal steps
            steps += 1
            return any(o.finished for o in outs.get("u", []))

        outs = _step_until(eng, user_done)
        assert [len(o.new_token_ids) for o in outs["u"]] == [1, 1]
        assert steps <= 5, f"the user request took {steps} steps"
        assert not pending.done, "the warm finished first: the test shows nothing"
        results = []
        pending.add_done_callback(lambda p: results.append(p.result))
        _step_until(eng, lambda _: pending.done)
        assert results == [pending.result] and pending.result == 6 * 600
        assert all(eng.prefix_match_len(p) >= 596 for p in prefixes[-3:])
        assert not eng.has_work()
    finally:
        eng.shutdown()


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
def test_warm_requests_yield_their_kv_to_a_user_request(tiny_qwen3_path, overlap):
    # a 256-token pool: a running 200-token warm leaves too little for the user's 120 tokens
    eng = _engine(tiny_qwen3_path, overlap, num_pages=64, page_size=4, max_prefill_length=32, max_running_requests=4)
    try:
        warm, user = _prompts(eng.runner.vocab_size, [200, 120], seed=1)
        pending = eng.warm_async([warm])
        for _ in range(2):  # the warm request is admitted and holds its pages
            eng.step()
        assert eng.metrics()["num_running_reqs"] == 1
        eng.add_request(EngineRequest(rid="u", input_ids=user, sampling=SamplingParams(max_new_tokens=3, **GREEDY)))
        outs = _step_until(eng, lambda o: any(x.finished for x in o.get("u", [])))
        assert sum(len(o.new_token_ids) for o in outs["u"]) == 3
        assert eng.scheduler.counters["warm_yields_total"] >= 1
        _step_until(eng, lambda _: pending.done)
        assert pending.result > 0 and eng.metrics()["retractions_total"] == 0
    finally:
        eng.shutdown()


def test_offline_warm_stays_synchronous(tiny_qwen3_path):
    from minisgl import LLM

    with LLM(tiny_qwen3_path, backend="hf", dtype="float32", page_size=4) as llm:
        assert llm.warm(["one two three four five six seven eight nine ten"]) > 0
        assert llm.metrics()["kv_cached_tokens"] > 0
        assert not llm.engine.has_work()
        out = llm.generate(["one two three four five six seven eight nine ten eleven"],
                           SamplingParams(max_new_tokens=2, **GREEDY))[0]
        assert out.cached_tokens > 0 and len(out.token_ids) == 2


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory):
    srv = start_server_with_control(tiny_qwen3_path, log_dir=tmp_path_factory.mktemp("warm-behind-users"))
    yield srv
    srv.stop()


def test_warm_over_the_control_plane_does_not_hold_a_user_request(server):
    rng = random.Random(0)
    words = "the cat dog sat on a mat and ran far away from home into woods where old trees grow".split()
    # 10 prefixes of ~3,000 tokens each (the context is 4096): ~30k tokens to prefill
    prefixes = [" ".join(rng.choice(words) for _ in range(2200)) for _ in range(10)]
    reply: dict = {}

    def warm() -> None:
        with ControlClient(server.endpoint, timeout=300) as client:
            started = time.monotonic()
            reply["result"] = client.call("warm", prefixes=prefixes)
            reply["done_at"] = time.monotonic()
            reply["seconds"] = reply["done_at"] - started

    thread = threading.Thread(target=warm, daemon=True)
    thread.start()
    with ControlClient(server.endpoint, timeout=30) as client:  # the warm is in the engine
        deadline = time.monotonic() + 60
        while not client.call("metrics")["num_running_reqs"]:
            assert time.monotonic() < deadline and thread.is_alive(), f"the warm never ran: {reply}"
            time.sleep(0.05)
    started = time.monotonic()
    r = httpx.post(server.url + "/generate", json={"prompt": "hello", "sampling_params": {
        "max_new_tokens": 2, "temperature": 0, "ignore_eos": True}}, timeout=120)
    user_done = time.monotonic()
    assert r.status_code == 200, r.text
    assert r.json()["meta_info"]["completion_tokens"] == 2
    thread.join(300)
    assert "result" in reply, "the warm never answered"
    assert reply["result"]["cached_tokens"] > 20_000, reply["result"]
    user_s = user_done - started
    # the user request finished well before the warm, and took a small part of its time
    assert reply["done_at"] - user_done > 0.5 * reply["seconds"], (user_s, reply["seconds"])
    assert user_s < 0.25 * reply["seconds"], (user_s, reply["seconds"])
