"""`--backend auto` on this CPU machine: hf is chosen and the reasons sgl and mlx were not
are given; an explicit backend that cannot run raises naming why; an unknown name lists
the installed backends."""

import pytest
import torch

from minisgl.engine.engine import select_backend
from minisgl.plugins import PluginError, get_registry
from minisgl.settings import settings_from_kwargs

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")


def test_auto_on_cpu_picks_hf_and_says_why_not_the_others(caplog):
    caplog.set_level("INFO", logger="minisgl.engine")
    spec, reason = select_backend(settings_from_kwargs(model="x"), get_registry())
    assert spec.name == "hf"
    assert reason.startswith("auto on cpu: hf")
    assert "sgl: needs a CUDA GPU" in reason
    assert "mlx: " in reason
    logged = caplog.text
    assert "backend sgl skipped" in logged and "backend mlx skipped" in logged


def test_explicit_unavailable_backend_raises_with_the_reason():
    with pytest.raises(RuntimeError, match=r"backend 'sgl' .*cannot run here: needs a CUDA GPU"):
        select_backend(settings_from_kwargs(model="x", backend="sgl"), get_registry())


def test_unknown_backend_lists_the_installed_ones():
    with pytest.raises(PluginError) as err:
        select_backend(settings_from_kwargs(model="x", backend="nope"), get_registry())
    msg = str(err.value)
    assert "unknown backend 'nope'" in msg
    for name in ("hf", "sgl", "mlx"):
        assert name in msg.split("installed:")[1]
