"""Page-table and index math of a step: query offsets, batch validation, the KV cache, graph sizes."""

from __future__ import annotations

import pytest
import torch
from batches import SlotPlanner, make_batch

from minisgl.cache.kv_budget import KVShape
from minisgl_backend_sgl.cuda_graph import GIB, graph_batch_sizes, resolve_max_bs
from minisgl_backend_sgl.forward_meta import MAX_DECODE_SPLITS, build_meta, decode_splits, query_starts, validate_batch
from minisgl_backend_sgl.kv_cache import KVCache
from minisgl_backend_sgl.runner import activation_reserve_bytes


def test_query_starts():
    assert query_starts([3, 1, 5]) == [0, 3, 4]
    assert query_starts([]) == []


def test_build_meta_extend_and_decode():
    planner = SlotPlanner(64)
    batch = make_batch(planner, [(0, [1, 2, 3]), (1, [4])])
    meta = build_meta(batch, torch.device("cpu"))
    assert not meta.is_decode
    assert meta.qo_start.tolist() == [0, 3] and meta.extend_lens.tolist() == [3, 1] and meta.prefix_lens.tolist() == [0, 0]
    assert meta.seq_lens.dtype == torch.int32 and meta.max_extend_len == 3
    decode = make_batch(planner, [(0, [9]), (1, [8])])
    meta = build_meta(decode, torch.device("cpu"), decode_splits=4)
    assert meta.is_decode and meta.seq_lens.tolist() == [4, 2] and meta.decode_splits == 4 and meta.qo_start is None
    # the page table row of request 0 lists its slots in position order
    assert decode.page_table[0, :4].tolist() == planner.slots[0]


def test_validate_batch_names_the_field():
    batch = make_batch(SlotPlanner(64), [(0, [1, 2, 3])])
    validate_batch(batch)
    batch.extend_lens = [2]
    with pytest.raises(ValueError, match="extend_lens"):
        validate_batch(batch)
    batch = make_batch(SlotPlanner(64), [(0, [1, 2, 3])])
    batch.page_table = batch.page_table[:, :2]
    with pytest.raises(ValueError, match="page_table"):
        validate_batch(batch)


def test_decode_splits_fill_the_gpu_and_stay_bounded():
    assert decode_splits(1, 8, 132) == MAX_DECODE_SPLITS
    assert decode_splits(16, 8, 132) == 5
    assert decode_splits(64, 8, 132) == 2
    assert decode_splits(256, 8, 132) == 1


def test_graph_batch_sizes():
    assert graph_batch_sizes(0) == []
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert graph_batch_sizes(160)[-3:] == [144, 152, 160] and len(graph_batch_sizes(160)) == 4 + 19
    assert resolve_max_bs(None, 256, 80 * GIB) == 256
    assert resolve_max_bs(None, 256, 40 * GIB) == 160
    assert resolve_max_bs(None, 256, 16 * GIB) == 64
    assert resolve_max_bs(None, 32, 80 * GIB) == 32
    assert resolve_max_bs(0, 256, 80 * GIB) == 0


def test_kv_cache_has_a_scratch_slot_and_logs(caplog):
    shape = KVShape(num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.float32, dtype_size=4)
    with caplog.at_level("INFO"):
        kv = KVCache(shape, num_pages=3, page_size=4, device=torch.device("cpu"))
    assert kv.capacity == 12 and kv.scratch_slot == 12 and kv.k.shape == (2, 13, 2, 4)
    assert "Allocating 3 pages for KV cache, K + V = " in caplog.text


def test_activation_reserve_grows_with_prefill_budget():
    from test_config_and_weights import QWEN3

    from minisgl_backend_sgl.config import parse_model_config

    cfg = parse_model_config(QWEN3)
    small = activation_reserve_bytes(cfg, torch.bfloat16, 1024, 8)
    assert activation_reserve_bytes(cfg, torch.bfloat16, 8192, 8) > small > GIB
