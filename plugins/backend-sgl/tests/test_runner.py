"""The runner through its factory, on the CPU (the torch reference kernels) and, where there
is one, on a CUDA GPU: a tiny checkpoint, prefill then decode steps; on the CPU its logits
equal the model run by hand, on the GPU asynchronous results and CUDA graphs agree with eager."""

from __future__ import annotations

import pytest
import torch
from batches import SlotPlanner, make_batch
from harness import ModelHarness

from minisgl.settings import settings_from_kwargs
from minisgl.testing import make_tiny_model

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), arch="qwen3", seed=1)


@pytest.fixture(scope="module", params=DEVICES)
def runner(request, tiny_path):
    from minisgl.models import ResolvedModel
    from minisgl_backend_sgl.runner import create_runner

    settings = settings_from_kwargs(dtype="float32", num_pages=512, page_size=4, cuda_graph_max_bs=4,
                                    max_running_requests=8, device=request.param)
    r = create_runner(settings, ResolvedModel(name="tiny", path=tiny_path, dummy=False, kind="local"))
    yield r
    r.shutdown()


def test_protocol_fields(runner):
    from minisgl.engine.batch import ModelRunner

    assert isinstance(runner, ModelRunner)
    assert runner.kv_capacity() == 2048
    assert runner.eos_token_ids and runner.vocab_size > 0 and runner.max_context_len == 2048
    assert runner.supports_overlap == (runner.device.type == "cuda")  # on a CPU forward is synchronous


def test_prefill_and_decode_steps(runner, tiny_path):
    device = runner.device.type
    planner = SlotPlanner(runner.kv_capacity(), seed=3)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12]]
    batch = make_batch(planner, list(enumerate(prompts)), device=device)
    if device == "cpu":  # the runner's logits are the model's, run by hand on the same weights
        by_hand = ModelHarness(tiny_path, capacity=runner.kv_capacity() + 1).logits(batch)
        torch.testing.assert_close(runner.logits(batch), by_hand, atol=1e-5, rtol=1e-5)
    result = runner.forward(batch)
    assert (result.ready is not None) == (device == "cuda")
    tokens = result.resolve().next_tokens.tolist()
    assert len(tokens) == 3 and result.next_tokens.device.type == "cpu"
    for _ in range(3):
        batch = make_batch(planner, [(i, [t]) for i, t in enumerate(tokens)], device=device)
        if runner.graphs is not None:
            graph_logits = runner.logits(batch).clone()  # 3 rows replay the graph of 4 (one padded row)
            graphs, runner.graphs = runner.graphs, None
            try:
                eager_logits = runner.logits(batch)
            finally:
                runner.graphs = graphs
            torch.testing.assert_close(graph_logits, eager_logits, atol=1e-5, rtol=1e-5)
        tokens = runner.forward(batch).resolve().next_tokens.tolist()
        assert len(tokens) == 3


def test_short_extends_as_decode_rows_give_the_extend_paths_logits(runner):
    """A verify step (a request's last token and its drafts, every row sampled) run as one
    decode row per token, eagerly and (on CUDA) through a decode graph, equals the extend path."""
    from minisgl_backend_sgl.cuda_graph import as_decode_rows

    device = runner.device.type
    planner = SlotPlanner(runner.kv_capacity(), seed=5)
    runner.logits(make_batch(planner, [(0, [3, 4, 5, 6, 7, 8]), (1, [9, 10])], device=device))
    step = make_batch(planner, [(0, [11, 12, 13]), (1, [14])], device=device, sample_all_rows=True)
    graphs, runner.graphs = runner.graphs, None
    try:
        extend = runner.logits(step).clone()
        rows = as_decode_rows(step)
        assert rows.is_decode and rows.seq_lens == [7, 8, 9, 3] and rows.prefix_lens == [6, 7, 8, 2]
        torch.testing.assert_close(runner.logits(rows), extend, atol=1e-5, rtol=1e-5)
    finally:
        runner.graphs = graphs
    if graphs is not None:
        assert graphs.can_run_as_decode_rows(step) and not graphs.can_run(step)
        torch.testing.assert_close(runner.logits(step), extend, atol=1e-5, rtol=1e-5)


def test_intermediate_chunk_samples_nothing(runner):
    planner = SlotPlanner(runner.kv_capacity(), seed=4)
    batch = make_batch(planner, [(0, [1, 2, 3])], device=runner.device.type)
    batch.sampling = None
    assert runner.forward(batch).resolve().next_tokens.numel() == 0


def test_attention_backend_auto_runs_the_devices_kernels_and_the_others_need_cuda(runner):
    from minisgl_backend_sgl.kernels.select import select_kernels

    assert runner.kernels.name.startswith("triton" if runner.device.type == "cuda" else "torch reference")
    assert runner.kernels.attention[1] == ("triton" if runner.device.type == "cuda" else "reference")
    for backend in ("triton", "fa", "fa,triton"):
        with pytest.raises(ValueError, match=f"--attention-backend {backend} runs on CUDA"):
            select_kernels(torch.device("cpu"), torch.float32, attention_backend=backend)
