"""`--attention-backend fa`: how it packs the paged pool (any device), why it refuses where it
cannot run, and on a CUDA GPU the kernel against the torch reference and a runner on it."""

from __future__ import annotations

import pytest
import torch
from batches import SlotPlanner, make_batch

from minisgl.settings import settings_from_kwargs
from minisgl.testing import make_tiny_model
from minisgl_backend_sgl.forward_meta import build_meta
from minisgl_backend_sgl.kernels import flash_attention, reference


def _steps(device: str) -> tuple[SlotPlanner, list]:
    """An extend step of three requests (two after a cached prefix, one fresh), then a decode
    step of the same three, over scattered slots."""
    planner = SlotPlanner(300, seed=2)
    make_batch(planner, [(0, list(range(33))), (2, list(range(90)))])  # the cached prefixes
    extend = make_batch(planner, [(0, list(range(5))), (1, list(range(70))), (2, [7])], device=device)
    decode = make_batch(planner, [(0, [1]), (1, [2]), (2, [3])], device=device)
    return planner, [extend, decode]


def test_packed_keys_list_each_requests_slots_in_position_order():
    planner, (extend, decode) = _steps("cpu")
    for batch in (extend, decode):
        meta = build_meta(batch, torch.device("cpu"))
        cu_keys, slots = flash_attention.packed_key_slots(meta)
        lengths = batch.seq_lens
        assert cu_keys.tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
        assert meta.num_keys == sum(lengths) and meta.max_seq_len == max(lengths)
        expected = [s for rid in range(3) for s in planner.slots[rid][: lengths[rid]]]
        assert slots.tolist() == expected


def test_fa_says_why_it_cannot_run():
    assert "CUDA" in flash_attention.unavailable(torch.device("cpu"), torch.bfloat16)
    assert "16-bit" in flash_attention.unavailable(torch.device("cuda"), torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads,dim", [(8, 2, 64), (16, 8, 128)])
def test_the_kernel_matches_the_reference_after_a_prefix_and_on_decode_rows(heads, kv_heads, dim):
    device = torch.device("cuda")
    assert flash_attention.unavailable(device, torch.bfloat16) is None
    k = torch.randn(301, kv_heads, dim, device=device, dtype=torch.bfloat16)
    v = torch.randn(301, kv_heads, dim, device=device, dtype=torch.bfloat16)
    for batch in _steps("cuda")[1]:
        meta = build_meta(batch, device)
        # q as the model passes it: a strided view of the fused qkv projection
        qkv = torch.randn(batch.num_tokens, (heads + 2 * kv_heads) * dim, device=device, dtype=torch.bfloat16)
        q = qkv[:, : heads * dim].view(-1, heads, dim)
        out = flash_attention.varlen_attention(q, k, v, meta)
        if meta.is_decode:
            want = reference.decode_attention(q, k, v, meta.page_table, meta.seq_lens, 1)
        else:
            want = reference.extend_attention(q, k, v, meta.page_table, meta.qo_start, meta.extend_lens,
                                              meta.prefix_lens, meta.max_extend_len)
        torch.testing.assert_close(out, want, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_a_runner_on_fa_gives_the_triton_runners_logits(tmp_path):
    from minisgl.models import ResolvedModel
    from minisgl_backend_sgl.runner import create_runner

    model = ResolvedModel(name="tiny", path=make_tiny_model(tmp_path, arch="qwen3", seed=1), dummy=False, kind="local")
    logits = {}
    for backend in ("fa", "triton"):
        settings = settings_from_kwargs(dtype="bfloat16", num_pages=512, page_size=4, cuda_graph_max_bs=4,
                                        max_running_requests=8, device="cuda", attention_backend=backend)
        runner = create_runner(settings, model)
        assert runner.kernels.attention == (backend, backend)
        assert (runner.graphs is None) == (backend == "fa")  # fa decodes eagerly
        planner = SlotPlanner(runner.kv_capacity(), seed=3)
        rows = [runner.logits(make_batch(planner, [(0, [5, 6, 7, 8, 9]), (1, [10, 11])], device="cuda"))]
        rows.append(runner.logits(make_batch(planner, [(0, [3]), (1, [4])], device="cuda")))
        logits[backend] = torch.cat(rows).float()
        runner.shutdown()
    torch.testing.assert_close(logits["fa"], logits["triton"], atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
def test_auto_times_both_prefill_kernels_logs_the_choice_and_decodes_on_triton(caplog):
    from minisgl_backend_sgl.kernels.select import select_kernels

    device = torch.device("cuda")
    with caplog.at_level("INFO"):
        kernels = select_kernels(device, torch.bfloat16, "auto", heads=(8, 2, 64), prefill_tokens=1024)
    assert kernels.attention[1] == "triton" and "prefill runs " + kernels.attention[0] in caplog.text
    k = torch.randn(301, 2, 64, device=device, dtype=torch.bfloat16)
    extend = _steps("cuda")[1][0]
    meta = build_meta(extend, device)
    q = torch.randn(extend.num_tokens, 8, 64, device=device, dtype=torch.bfloat16)
    want = reference.extend_attention(q, k, k, meta.page_table, meta.qo_start, meta.extend_lens, meta.prefix_lens,
                                      meta.max_extend_len)
    torch.testing.assert_close(kernels.extend_attention(q, k, k, meta), want, atol=2e-2, rtol=2e-2)


def test_auto_sends_steps_to_fa_from_the_key_count_where_it_stays_faster():
    from minisgl_backend_sgl.kernels.prefill_choice import fa_threshold

    keys = [512, 8192, 16384, 32768]
    assert fa_threshold(keys, [2, 3, 4, 5], [1, 2, 6, 9]) == 16384
    assert fa_threshold(keys, [1, 3, 4, 5], [2, 2, 6, 9]) == 16384  # a win below a loss does not count
    assert fa_threshold(keys, [1, 1, 1, 1], [2, 2, 2, 2]) == 512
    assert fa_threshold(keys, [1, 1, 1, 3], [2, 2, 2, 2]) is None
