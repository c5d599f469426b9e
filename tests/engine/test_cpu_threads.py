"""The host's thread plan (minisgl.cpu_threads): what each layout gets, what overrides it,
what is logged, and how a running engine yields threads to other work on its cores."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from minisgl import LLM, SamplingParams
from minisgl import cpu_threads as ct
from minisgl.settings import SettingsError, settings_from_kwargs

EIGHT = list(range(8))


def test_one_engine_in_process_takes_every_core_unpinned():
    plan = ct.plan_threads(cpus=[0, 1])
    assert (plan.threads, plan.cpus, plan.fixed) == (2, None, False)
    assert "2 usable cores" in plan.reason


def test_a_small_host_shares_its_cores_with_the_front_end():
    plan = ct.plan_threads(cpus=[0, 1], front_end=1)
    assert (plan.threads, plan.cpus) == (2, None)
    assert "front end shares them" in plan.reason


def test_a_larger_host_keeps_a_core_for_the_front_end():
    plan = ct.plan_threads(cpus=EIGHT, front_end=1)
    assert (plan.threads, plan.cpus) == (7, tuple(range(7)))
    assert "1 kept for the server's front end" in plan.reason


def test_tokenizer_workers_count_in_the_front_end_up_to_a_quarter():
    assert ct.plan_threads(cpus=list(range(16)), front_end=3).cpus == tuple(range(13))
    assert ct.plan_threads(cpus=EIGHT, front_end=5).cpus == tuple(range(6))  # 8 // 4 = 2 at most


def test_replicas_split_the_cores_into_disjoint_sets():
    plans = [ct.plan_threads(cpus=EIGHT, replicas=3, replica=i, front_end=1) for i in range(3)]
    # 7 engine cores over 3 replicas: 3, 2, 2, never overlapping, none left idle
    assert [p.cpus for p in plans] == [(0, 1, 2), (3, 4), (5, 6)]
    assert [p.threads for p in plans] == [3, 2, 2]
    two = [ct.plan_threads(cpus=[0, 1], replicas=2, replica=i, front_end=1) for i in range(2)]
    assert [(p.threads, p.cpus) for p in two] == [(1, (0,)), (1, (1,))]


def test_more_replicas_than_cores_share_them_with_one_thread_each():
    plan = ct.plan_threads(cpus=[0, 1], replicas=3, replica=2)
    assert (plan.threads, plan.cpus) == (1, None)
    assert "3 replicas share 2" in plan.reason


def test_tensor_parallel_ranks_split_the_share():
    assert ct.plan_threads(cpus=[0, 1, 2, 3], tp_size=2).threads == 2


def test_a_cpu_set_narrows_the_pool_and_pins():
    plan = ct.plan_threads(cpus=EIGHT, cpu_set="2-3,9")
    assert (plan.threads, plan.cpus) == (2, (2, 3))
    assert "--cpu-set 2-3" in plan.reason
    with pytest.raises(ValueError, match="--cpu-set 9: none of these CPUs"):
        ct.plan_threads(cpus=EIGHT, cpu_set="9")


def test_cpu_threads_wins_over_the_plan_and_stays_fixed():
    plan = ct.plan_threads(cpus=EIGHT, replicas=2, front_end=1, cpu_threads=5)
    assert (plan.threads, plan.fixed) == (5, True)
    assert plan.cpus == (0, 1, 2, 3)  # still its replica's cores
    assert "--cpu-threads 5" in plan.reason


@pytest.mark.parametrize("text,cpus", [("0-3,6", [0, 1, 2, 3, 6]), ("5", [5]), ("1,0,1", [0, 1])])
def test_cpu_set_format(text, cpus):
    assert ct.parse_cpu_set(text) == cpus
    assert ct.parse_cpu_set(ct.format_cpu_set(cpus)) == cpus


@pytest.mark.parametrize("bad", ["a-b", "3-1", "-1", "0-"])
def test_a_bad_cpu_set_is_refused_naming_the_setting(bad):
    with pytest.raises(SettingsError, match="cpu_set"):
        settings_from_kwargs(cpu_set=bad)
    with pytest.raises(SettingsError, match="none of these CPUs is usable"):
        settings_from_kwargs(cpu_set="4096")


def test_the_plan_travels_to_the_engine_process_in_its_environment(monkeypatch):
    plan = ct.plan_threads(cpus=EIGHT, replicas=2, replica=1, front_end=1)
    monkeypatch.setenv(ct.PLAN_ENV, plan.to_env())
    assert ct.ThreadPlan.from_env() == plan
    monkeypatch.delenv(ct.PLAN_ENV)
    assert ct.ThreadPlan.from_env() is None


def test_the_server_gives_each_cpu_replica_its_share_and_a_short_spin(monkeypatch):
    from minisgl_server.replica_layout import plan_replicas

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr("minisgl_server.replica_layout.usable_cpus", lambda: [0, 1])
    placements = plan_replicas(settings_from_kwargs(device="cpu", dp_size=2))
    shares = [json.loads(p.env[ct.PLAN_ENV]) for p in placements]
    assert [(s["threads"], s["cpus"]) for s in shares] == [(1, [0]), (1, [1])]
    assert all(p.env["GOMP_SPINCOUNT"] == ct.SPIN_ENV["GOMP_SPINCOUNT"] for p in placements)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stands
    assert "GOMP_SPINCOUNT" not in plan_replicas(settings_from_kwargs(device="cpu"))[0].env


class FakeProc:
    """/proc/stat and /proc/self/stat as counters the test moves."""

    def __init__(self, monkeypatch):
        self.now, self.busy, self.own = 100.0, 0, 0
        monkeypatch.setattr(ct, "_busy_ticks", lambda cpus: self.busy)
        monkeypatch.setattr(ct, "_own_ticks", lambda: self.own)
        monkeypatch.setattr(ct.time, "monotonic", lambda: self.now)

    def window(self, own_cores: float, other_cores: float, hz: int) -> None:
        """One adjustment window in which this process used `own_cores`, others `other_cores`."""
        seconds = ct.ADJUST_EVERY_S
        self.now += seconds
        self.own += int(own_cores * seconds * hz)
        self.busy += int((own_cores + other_cores) * seconds * hz)


def test_a_running_engine_yields_threads_to_other_work_and_takes_them_back(monkeypatch, caplog):
    proc = FakeProc(monkeypatch)
    before = torch.get_num_threads()
    threads = ct.EngineThreads(ct.ThreadPlan(threads=2, cpus=(0, 1), fixed=False, reason="test"))
    hz = threads._hz
    try:
        torch.set_num_threads(2)
        threads.tick()  # first sample
        proc.window(own_cores=2.0, other_cores=0.1, hz=hz)  # the server's front end: not worth a core
        threads.tick()
        assert threads.threads == 2
        with caplog.at_level(logging.INFO, logger="minisgl.threads"):
            proc.window(own_cores=1.4, other_cores=0.6, hz=hz)  # a neighbour took its share
            threads.tick()
        assert threads.threads == 1 and torch.get_num_threads() == 1
        assert "CPU threads 2 -> 1: other processes use 0.6 of 2 cores" in caplog.text
        proc.window(own_cores=1.0, other_cores=1.0, hz=hz)
        threads.tick()
        assert threads.threads == 1
        proc.window(own_cores=1.0, other_cores=0.0, hz=hz)  # the neighbour left: wait one more window
        threads.tick()
        assert threads.threads == 1
        proc.window(own_cores=1.0, other_cores=0.0, hz=hz)
        threads.tick()
        assert threads.threads == 2 and torch.get_num_threads() == 2
        proc.now += 0.01  # within a window: nothing read, nothing changed
        proc.busy += 10 * hz
        threads.tick()
        assert threads.threads == 2
    finally:
        torch.set_num_threads(before)


def test_a_fixed_count_is_never_adjusted(monkeypatch):
    proc = FakeProc(monkeypatch)
    threads = ct.EngineThreads(ct.ThreadPlan(threads=2, cpus=None, fixed=True, reason="--cpu-threads 2"))
    assert not threads.adapt
    threads.tick()
    proc.window(own_cores=1.0, other_cores=2.0, hz=threads._hz)
    threads.tick()
    assert threads.threads == 2


def test_an_accelerator_engine_takes_one_host_thread_unless_told(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        threads = ct.EngineThreads(ct.ThreadPlan(threads=2, cpus=None, fixed=False, reason="test"))
        threads.host_only("cuda:0")
        assert torch.get_num_threads() == 1 and not threads.adapt
        threads.restore()
        assert torch.get_num_threads() == 2
        for plan, env in ((ct.ThreadPlan(threads=2, cpus=None, fixed=True, reason="--cpu-threads 2"), None),
                          (ct.ThreadPlan(threads=2, cpus=None, fixed=False, reason="test"), "2")):
            if env:
                monkeypatch.setenv("OMP_NUM_THREADS", env)
            ct.EngineThreads(plan).host_only("cuda:0")
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_pinned_plan_pins_every_thread_and_gives_the_affinity_back(monkeypatch):
    pins = []
    monkeypatch.setattr(ct, "_pin", pins.append)
    monkeypatch.setattr(ct, "usable_cpus", lambda: [0, 1, 2, 3])
    before = torch.get_num_threads()
    threads = ct.EngineThreads(ct.plan_threads(cpus=[0, 1, 2, 3], cpu_set="1-2"))
    try:
        threads.apply()
        assert pins == [(1, 2)] and torch.get_num_threads() == 2
        threads.restore()
        assert pins == [(1, 2), (0, 1, 2, 3)] and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_an_engine_applies_cpu_threads_logs_its_plan_and_gives_the_threads_back(tiny_llama_path, caplog):
    before = torch.get_num_threads()
    with caplog.at_level(logging.INFO, logger="minisgl.threads"):
        with LLM(tiny_llama_path, dtype="float32", backend="hf", cpu_threads=1) as llm:
            assert torch.get_num_threads() == 1 and not llm.engine.threads.adapt
            out = llm.generate([5, 6, 7], SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True))
            assert len(out[0].token_ids) == 3
    assert torch.get_num_threads() == before
    assert "CPU threads: 1, unpinned" in caplog.text and "--cpu-threads 1" in caplog.text


def test_torch_and_the_c_decode_kernel_share_one_openmp_runtime():
    kernels = pytest.importorskip("minisgl_backend_hf.cpu_kernels")
    if kernels.paged_decode_kernel() is None:
        pytest.skip("no C compiler: the kernel is not built")
    import os

    with open("/proc/self/maps") as fh:
        runtimes = {line.split()[-1] for line in fh if line.rstrip().endswith("/libgomp.so.1")}
    # the kernel asks for libgomp.so.1: torch's copy answers, not a second pool from the system's
    # (wheels such as sentencepiece bundle theirs under other names, for their own use)
    assert runtimes == {os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")}, runtimes


def test_the_team_size_changes_no_result(tiny_llama_path):
    """The engine moves between one thread and its plan under load: the same prompts must
    give the same tokens and logprobs either way."""
    params = SamplingParams(max_new_tokens=8, temperature=0.0, logprobs=True, ignore_eos=True)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14], [15, 16]]
    runs = []
    for threads in (1, 2):
        with LLM(tiny_llama_path, dtype="float32", backend="hf", cpu_threads=threads) as llm:
            runs.append([(o.token_ids, o.logprobs) for o in llm.generate(prompts, params)])
    assert runs[0] == runs[1]
