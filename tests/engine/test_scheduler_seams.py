"""The scheduler's seams for several tokens per request in one step: KV truncated back to a
length, and a step that samples several rows of one request. Driven with a runner that
returns fixed tokens, so the bookkeeping is checked exactly."""

import pytest
import torch

from minisgl import SamplingParams
from minisgl.cache.radix import RadixCache
from minisgl.engine.batch import ForwardBatch, ForwardResult, ModelRunner
from minisgl.engine.engine import Engine
from minisgl.engine.queue_policy import FCFS
from minisgl.engine.request import Req
from minisgl.engine.scheduler import Scheduler
from minisgl.settings import Settings

EOS = 2


class FixedRunner(ModelRunner):
    """Samples token 7 for every row; holds no K/V."""

    eos_token_ids = [EOS]
    vocab_size = 32
    max_context_len = 256
    device = torch.device("cpu")

    def kv_capacity(self) -> int:
        return 64

    def forward(self, batch: ForwardBatch) -> ForwardResult:
        return ForwardResult(next_tokens=torch.full((len(batch.sample_indices),), 7, dtype=torch.int64))


def make_scheduler(page_size: int = 4) -> Scheduler:
    return Scheduler(FixedRunner(), RadixCache(page_size, Settings()), FCFS(), page_size=page_size,
                     max_running_requests=4, max_prefill_length=64, max_context_len=256)


def make_req(rid: str, prompt: list[int], max_new_tokens: int = 16, seq: int = 0) -> Req:
    return Req(rid=rid, prompt_ids=prompt, params=SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
               max_new_tokens=max_new_tokens, stop_ids=frozenset({EOS}), seq=seq)


def run_step(s: Scheduler, runner: ModelRunner):
    scheduled = s.schedule()
    assert scheduled is not None
    scheduled.result = runner.forward(scheduled.batch)
    return scheduled, s.process(scheduled, scheduled.result)


def test_truncate_gives_back_whole_pages_past_the_length():
    s = make_scheduler(page_size=4)
    runner = FixedRunner()
    req = make_req("a", list(range(10, 20)))  # 10 prompt tokens: 3 pages
    s.add(req)
    run_step(s, runner)
    for _ in range(5):  # kv_len 10 -> 15 (4 pages), 16 tokens known
        run_step(s, runner)
    assert req.kv_len == 15 and len(req.slots) == 16
    free_before = s.kv.pool.free_pages
    s.kv.truncate(req, 6)  # back to 6 computed positions: 2 pages are enough
    assert req.kv_len == 6 and len(req.slots) == 8 and len(req.private_pages) == 2
    assert s.kv.pool.free_pages == free_before + 2
    s.check_invariants()
    with pytest.raises(ValueError, match="cannot truncate its KV to 9 tokens"):
        s.kv.truncate(req, 9)  # beyond what is computed
    # the request runs on from the shorter KV: positions 6.. are computed again
    del req.all_ids[7:]
    req.num_output = len(req.all_ids) - len(req.prompt_ids)
    scheduled, _ = run_step(s, runner)
    assert scheduled.batch.prefix_lens == [6] and scheduled.batch.extend_lens == [1]
    s.check_invariants()


def test_a_step_may_sample_several_rows_of_one_request():
    s = make_scheduler()
    req = make_req("a", [5, 6, 7, 8, 9])
    s.add(req)
    scheduled = s.schedule()
    assert scheduled is not None and scheduled.sampled == [req]
    # as a verify step would: three rows of the same request, the second one EOS
    scheduled.sampled = [req, req, req]
    req.inflight = 3
    outputs = s.process(scheduled, ForwardResult(next_tokens=torch.tensor([11, EOS, 13])))
    assert len(outputs) == 1
    out = outputs[0]
    assert out.new_token_ids == [11, EOS] and out.finished and out.finish_reason == "stop"
    assert out.completion_tokens == 2 and req.inflight == 0
    assert req.all_ids[-2:] == [11, EOS] and not s.running
    s.check_invariants()


def test_an_engine_takes_only_a_model_runner(tiny_llama_path):
    class NotARunner:
        device = torch.device("cpu")

    with pytest.raises(TypeError, match="not a minisgl.engine.batch.ModelRunner"):
        Engine(Settings(model_path=tiny_llama_path, device="cpu"), runner=NotARunner())  # type: ignore[arg-type]
