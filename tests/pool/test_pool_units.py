"""The pool's pieces that need no engine process: where replicas go (ENABLE_MULTI_DEVICE,
DP_SIZE) and how a policy that cannot be used is reported (SchedulerError)."""

from __future__ import annotations

import re
import types

import pytest

from minisgl.cpu_threads import PLAN_ENV, SPIN_ENV
from minisgl.dispatch import RoundRobin
from minisgl.hookspecs import hookimpl
from minisgl.plugins import Registry
from minisgl.settings import load_settings
from minisgl.specs import DispatchPolicySpec
from minisgl_server.engine_pool import EnginePool, SchedulerError
from minisgl_server.replica_layout import LayoutError, plan_replicas


def settings(**flags):
    return load_settings(flags=flags)[0]


def test_one_replica_per_gpu_when_several_gpus_and_dp_size_1():
    plan = plan_replicas(settings(device="auto"), gpus=["0", "1", "2"])
    assert [p.env for p in plan] == [{"CUDA_VISIBLE_DEVICES": g} for g in ("0", "1", "2")]
    assert [p.device for p in plan] == ["cuda (GPU 0)", "cuda (GPU 1)", "cuda (GPU 2)"]


def test_dp_size_spreads_replicas_over_the_visible_gpus_in_turn():
    plan = plan_replicas(settings(dp_size=3), gpus=["4", "6"])
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plan] == ["4", "6", "4"]


@pytest.mark.parametrize(
    ("flags", "gpus"),
    [
        ({"dp_size": 2, "device": "cpu"}, ["0", "1"]),  # CPU replicas: a GPU count is irrelevant
        ({"dp_size": 2, "enable_multi_device": False}, ["0", "1"]),
        ({"dp_size": 2}, ["0"]),  # one GPU: replicas share it
        ({"dp_size": 2}, []),
    ],
)
def test_dp_size_replicas_share_one_device_otherwise(flags, gpus):
    plan = plan_replicas(settings(**flags), gpus=gpus)
    assert [p.index for p in plan] == [0, 1]
    # no device of their own; only their share of the host's cores (minisgl.cpu_threads)
    assert all(device_env(p) == {} and PLAN_ENV in p.env for p in plan)


def device_env(placement) -> dict[str, str]:
    return {k: v for k, v in placement.env.items() if k not in (PLAN_ENV, *SPIN_ENV)}


def test_tensor_parallel_replicas_take_consecutive_gpus_and_their_own_port():
    plan = plan_replicas(settings(tp_size=2, port=4000), gpus=["0", "1", "2", "3"])
    assert [p.env for p in plan] == [{"CUDA_VISIBLE_DEVICES": "0,1", "MINISGL_TP_PORT": "4001"},
                                     {"CUDA_VISIBLE_DEVICES": "2,3", "MINISGL_TP_PORT": "4003"}]
    assert plan[1].device == "cuda (GPUs 2, 3)"
    cpu = plan_replicas(settings(tp_size=2, dp_size=2, device="cpu", port=4000), gpus=[])
    assert [device_env(p) for p in cpu] == [{"MINISGL_TP_PORT": "4001"}, {"MINISGL_TP_PORT": "4003"}]


@pytest.mark.parametrize(("flags", "gpus", "message"), [
    ({"tp_size": 2, "dp_size": 3}, ["0", "1", "2", "3"], "--dp-size 3 x --tp-size 2 needs 6 GPUs; 4 visible (0, 1, 2, 3)"),
    ({"tp_size": 4}, ["0", "1"], "--dp-size 1 x --tp-size 4 needs 4 GPUs; 2 visible (0, 1)"),
])
def test_a_layout_that_does_not_fit_the_gpus_is_refused_with_the_numbers(flags, gpus, message):
    with pytest.raises(LayoutError, match=re.escape(message)):
        plan_replicas(settings(**flags), gpus=gpus)


def broken_factory():
    raise RuntimeError("GPU 7 not found")


def registry_with_broken_policy() -> Registry:
    """rr, and "broken", whose factory raises."""

    @hookimpl
    def minisgl_register_schedulers(register):
        register(DispatchPolicySpec(name="rr", description="round robin", factory=RoundRobin))
        register(DispatchPolicySpec(name="broken", description="fails to start", factory=broken_factory))

    registry = Registry()
    registry.add_plugin(types.SimpleNamespace(minisgl_register_schedulers=minisgl_register_schedulers), "test-broken")
    return registry


@pytest.fixture()
def pool():
    pool = EnginePool(settings(scheduler="rr"), registry_with_broken_policy())
    yield pool
    pool.endpoints.close()
    pool.ctx.term()


def test_unknown_policy_is_a_scheduler_error_listing_the_installed_ones(pool):
    with pytest.raises(SchedulerError) as err:
        pool.set_policy("least_busy")
    assert "'least_busy'" in str(err.value) and "rr" in str(err.value) and "broken" in str(err.value)
    assert pool.policy_name == "rr"  # the previous policy stays


def test_a_policy_that_fails_to_start_is_a_scheduler_error(pool):
    with pytest.raises(SchedulerError, match="GPU 7 not found"):
        pool.set_policy("broken")
    assert pool.policy_name == "rr"
    assert pool.set_policy("rr") == {"previous": "rr", "scheduler": "rr"}
