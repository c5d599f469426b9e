"""`--backend auto` on this CPU machine: hf is chosen and the reasons sgl and mlx were not
are given; an explicit backend that cannot run raises naming why; an unknown name lists
the installed backends; auto follows the ranks the backends declare for each device."""

import pytest
import torch

from minisgl.engine.backend_choice import select_backend
from minisgl.hookspecs import hookimpl
from minisgl.plugins import PluginError, Registry, get_registry
from minisgl.settings import Settings, settings_from_kwargs
from minisgl.specs import BackendSpec

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")


@cpu_only
def test_auto_on_cpu_picks_hf_and_says_why_not_the_others(caplog):
    caplog.set_level("INFO", logger="minisgl.engine")
    spec, reason = select_backend(settings_from_kwargs(model="x"), get_registry())
    assert spec.name == "hf"
    assert reason.startswith("auto on cpu: hf")
    assert "sgl: needs a CUDA GPU" in reason
    assert "mlx: " in reason
    logged = caplog.text
    assert "backend sgl skipped" in logged and "backend mlx skipped" in logged


@cpu_only
def test_explicit_unavailable_backend_raises_with_the_reason():
    with pytest.raises(RuntimeError, match=r"backend 'sgl' .*cannot run here: needs a CUDA GPU"):
        select_backend(settings_from_kwargs(model="x", backend="sgl"), get_registry())


@cpu_only
def test_unknown_backend_lists_the_installed_ones():
    with pytest.raises(PluginError) as err:
        select_backend(settings_from_kwargs(model="x", backend="nope"), get_registry())
    msg = str(err.value)
    assert "unknown backend 'nope'" in msg
    for name in ("hf", "sgl", "mlx"):
        assert name in msg.split("installed:")[1]


def _toy(name: str, auto_rank: dict[str, int], why_not: str | None = None) -> BackendSpec:
    return BackendSpec(name=name, description=name, factory="x:y", auto_rank=auto_rank, probe=lambda s: why_not)


class _Toys:
    @hookimpl
    def minisgl_register_backends(self, register):
        register(_toy("slow", {"cpu": 10, "cuda": 10}))
        register(_toy("fast", {"cpu": 50}))
        register(_toy("broken", {"cpu": 90}, why_not="needs a toy accelerator"))
        register(_toy("gpu_only", {"cuda": 100}))


def test_auto_takes_the_highest_declared_rank_that_can_run(caplog):
    caplog.set_level("INFO", logger="minisgl.engine")
    registry = Registry()
    registry.add_plugin(_Toys(), "toys")
    spec, reason = select_backend(Settings(device="cpu"), registry)
    assert spec.name == "fast"
    assert reason.startswith("auto on cpu: fast (skipped broken: needs a toy accelerator; ")
    assert "slow: available, but auto prefers fast on cpu" in reason
    assert "gpu_only: available, but not ranked for --backend auto on cpu" in reason
    assert "backend gpu_only skipped" in caplog.text
    assert select_backend(Settings(device="cuda"), registry)[0].name == "gpu_only"


def test_auto_never_picks_a_backend_that_does_not_rank_the_device():
    class OnlyCuda:
        @hookimpl
        def minisgl_register_backends(self, register):
            register(_toy("gpu_only", {"cuda": 100}))

    registry = Registry()
    registry.add_plugin(OnlyCuda(), "only-cuda")
    with pytest.raises(RuntimeError, match=r"no backend can run on cpu \(installed: gpu_only\); gpu_only: available, "
                                           r"but not ranked"):
        select_backend(Settings(device="cpu"), registry)


def test_a_vision_language_model_goes_only_to_a_backend_that_runs_images(tiny_llava_path):
    from minisgl.models import resolve_model

    assert resolve_model(tiny_llava_path).takes_images
    registry = get_registry()
    spec, why = select_backend(settings_from_kwargs(model=tiny_llava_path, device="cpu"), registry, vision=True)
    assert spec.name == "hf" and spec.vision
    with pytest.raises(RuntimeError, match="runs text models only"):
        select_backend(settings_from_kwargs(model=tiny_llava_path, backend="auto", vlm_backend="mlx"), registry,
                       vision=True)
