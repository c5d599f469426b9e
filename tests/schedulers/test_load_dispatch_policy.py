"""load_dispatch_policy: SCHEDULER_MODE names a registered policy; bad names and broken
plugins fail with errors that say what is installed and what went wrong."""

from __future__ import annotations

import types

import pytest

from minisgl.dispatch import (
    DispatchPolicyError,
    ReplicaView,
    RoundRobin,
    choose_replica,
    load_dispatch_policy,
)
from minisgl.engine.messages import EngineRequest
from minisgl.hookspecs import hookimpl
from minisgl.plugins import PluginError, Registry, get_registry
from minisgl.sampling_params import SamplingParams
from minisgl.settings import load_settings
from minisgl.specs import DispatchPolicySpec
from minisgl_schedulers.dispatch import CacheAware, FirstFree, Random


class NeedsSettings:
    def __init__(self, settings) -> None:
        self.settings = settings

    def choose(self, request, replicas) -> int:
        return replicas[0].index


class NoChoose:
    pass


def broken_factory():
    raise RuntimeError("GPU 7 not found")


class AlwaysSeven:
    def choose(self, request, replicas) -> int:
        return 7


def registry_with(*specs: DispatchPolicySpec) -> Registry:
    @hookimpl
    def minisgl_register_schedulers(register):
        for spec in specs:
            register(spec)

    registry = Registry()
    plugin = types.SimpleNamespace(minisgl_register_schedulers=minisgl_register_schedulers)
    registry.add_plugin(plugin, "test-policies")
    return registry


def spec(name: str, factory) -> DispatchPolicySpec:
    return DispatchPolicySpec(name=name, description=f"test {name}", factory=factory)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("rr", RoundRobin), ("fsfs", FirstFree), ("random", Random), ("cache_aware", CacheAware)],
)
def test_installed_policies_load_by_name(name, expected):
    assert isinstance(load_dispatch_policy(name, get_registry()), expected)


def test_scheduler_mode_env_selects_the_policy():
    settings, sources = load_settings(environ={"SCHEDULER_MODE": "cache_aware"})
    assert sources["scheduler"] != "default"
    assert isinstance(load_dispatch_policy(settings.scheduler, settings=settings), CacheAware)


def test_unknown_name_lists_installed_policies():
    with pytest.raises(PluginError) as err:
        load_dispatch_policy("least_busy", get_registry())
    message = str(err.value)
    assert "'least_busy'" in message and "SCHEDULER_MODE" in message and "--scheduler" in message
    for installed in ("cache_aware", "fsfs", "random", "rr"):
        assert installed in message


def test_unknown_name_in_a_core_only_registry_suggests_the_schedulers_distribution():
    registry = registry_with(spec("rr", RoundRobin))
    with pytest.raises(PluginError, match=r"installed: rr .*pip install minisgl-schedulers"):
        load_dispatch_policy("cache_aware", registry)


def test_factory_gets_settings_when_it_accepts_them():
    registry = registry_with(spec("needs_settings", NeedsSettings))
    marker = object()
    assert load_dispatch_policy("needs_settings", registry, settings=marker).settings is marker


def test_import_failure_names_the_policy_and_its_factory():
    registry = registry_with(spec("ghost", "minisgl_no_such_module:Policy"))
    with pytest.raises(DispatchPolicyError, match=r"'ghost' \(minisgl_no_such_module:Policy.*ModuleNotFoundError"):
        load_dispatch_policy("ghost", registry)


def test_factory_failure_is_reported_with_its_cause():
    registry = registry_with(spec("broken", broken_factory))
    with pytest.raises(DispatchPolicyError, match="failed to start: RuntimeError: GPU 7 not found"):
        load_dispatch_policy("broken", registry)


def test_object_without_choose_is_rejected():
    registry = registry_with(spec("nochoose", NoChoose))
    with pytest.raises(DispatchPolicyError, match="no choose"):
        load_dispatch_policy("nochoose", registry)


def test_choose_replica_rejects_an_index_that_was_not_offered():
    replicas = [ReplicaView(index=0, inflight=0, max_inflight=0), ReplicaView(index=2, inflight=0, max_inflight=0)]
    request = EngineRequest(rid="a", input_ids=[1], sampling=SamplingParams())
    with pytest.raises(DispatchPolicyError, match=r"chose replica 7, not among offered \[0, 2\]"):
        choose_replica(AlwaysSeven(), request, replicas)
    assert choose_replica(RoundRobin(), request, replicas) in (0, 2)
    with pytest.raises(ValueError, match="at least one replica"):
        choose_replica(RoundRobin(), request, [])
