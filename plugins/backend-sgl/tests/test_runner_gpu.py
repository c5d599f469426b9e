"""The runner through its factory on a CUDA GPU: a tiny checkpoint, prefill then decode steps,
asynchronous results, CUDA graph and eager paths agreeing."""

from __future__ import annotations

import pytest
import torch
from batches import SlotPlanner, make_batch

from minisgl.settings import settings_from_kwargs
from minisgl.testing import make_tiny_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from minisgl.models import ResolvedModel
    from minisgl_backend_sgl.runner import create_runner

    path = make_tiny_model(tmp_path_factory.mktemp("tiny"), arch="qwen3", seed=1)
    settings = settings_from_kwargs(dtype="float32", num_pages=512, page_size=4, cuda_graph_max_bs=4, max_running_requests=8)
    r = create_runner(settings, ResolvedModel(name="tiny", path=path, dummy=False, kind="local"))
    yield r
    r.shutdown()


def test_protocol_fields(runner):
    from minisgl.engine.batch import ModelRunner

    assert isinstance(runner, ModelRunner)
    assert runner.kv_capacity() == 2048 and runner.device.type == "cuda"
    assert runner.eos_token_ids and runner.vocab_size > 0 and runner.max_context_len == 2048


def test_prefill_decode_graph_and_eager_agree(runner):
    planner = SlotPlanner(runner.kv_capacity(), seed=3)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12]]
    result = runner.forward(make_batch(planner, list(enumerate(prompts)), device="cuda"))
    assert result.ready is not None
    tokens = result.resolve().next_tokens.tolist()
    assert len(tokens) == 3 and result.next_tokens.device.type == "cpu"
    for _ in range(3):
        batch = make_batch(planner, [(i, [t]) for i, t in enumerate(tokens)], device="cuda")
        graph_logits = runner.logits(batch).clone()  # 3 rows replay the graph of 4 (one padded row)
        graphs, runner.graphs = runner.graphs, None
        try:
            eager_logits = runner.logits(batch)
        finally:
            runner.graphs = graphs
        torch.testing.assert_close(graph_logits, eager_logits, atol=1e-5, rtol=1e-5)
        tokens = runner.forward(batch).resolve().next_tokens.tolist()


def test_intermediate_chunk_samples_nothing(runner):
    planner = SlotPlanner(runner.kv_capacity(), seed=4)
    batch = make_batch(planner, [(0, [1, 2, 3])], device="cuda")
    batch.sampling = None
    assert runner.forward(batch).resolve().next_tokens.numel() == 0
