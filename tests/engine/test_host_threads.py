"""A CUDA engine runs torch on one host thread unless OMP_NUM_THREADS says otherwise; CPU
engines keep theirs (their forward runs on them)."""

from __future__ import annotations

import torch

from minisgl.engine.engine import _one_host_thread


def test_cuda_engines_take_one_host_thread_and_give_the_rest_back(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _one_host_thread(torch.device("cpu")) is None and torch.get_num_threads() == 2
        assert _one_host_thread("cuda:0") == 2 and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert _one_host_thread("cuda:0") is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
