"""No setting without an effect: every registered setting (the core's and every installed
plugin's) loads with its default, every value of a closed set (a `Literal`'s choices, a
bool's two) either loads into working Settings or is refused at start naming the setting,
and a setting that is not refused has code that reads it."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from minisgl.plugins import get_registry
from minisgl.settings import SettingsError, choices, load_settings

ROOT = Path(__file__).resolve().parents[2]

# values users bring from the original mini-sglang that nothing here implements
SEED_VALUES = {"attention_backend": ("fa", "fi", "sdpa", "torch")}
REFUSED = {
    ("attention_backend", "fi"), ("attention_backend", "sdpa"),
    ("attention_backend", "torch"), ("disable_pynccl", False), ("fast_stream_decode", False),
    ("hicache_storage_backend", "file"),  # alone: it needs --enable-hierarchical-cache and a directory
}
# settings of every installed distribution this walk must meet (it cannot pass on an empty registry)
KNOWN = {"attention_backend", "disable_pynccl", "fast_stream_decode", "moe_backend", "dtype", "prefix_cache",
         "enable_sdp", "mlx_trust_remote_code", "distributed_executor", "image_model_id"}


def _closed_values(spec) -> tuple:
    if spec.type is bool:
        return (False, True)
    return (choices(spec) or ()) + SEED_VALUES.get(spec.name, ())


def _load(name, value):
    settings, sources = load_settings(flags={name: value}, environ={})
    assert pickle.loads(pickle.dumps(settings)).values()[name] == getattr(settings, name)  # reaches engine processes
    return settings, sources


def test_every_setting_and_value_loads_or_is_refused_naming_the_setting():
    specs = get_registry().settings()
    assert KNOWN <= {s.name for s in specs}
    refused, walked = set(), 0
    for spec in specs:
        settings, sources = _load(spec.name, spec.default)  # the default works, whoever owns it
        assert getattr(settings, spec.name) == spec.default
        for value in _closed_values(spec):
            walked += 1
            try:
                settings, sources = _load(spec.name, value)
            except SettingsError as exc:
                assert exc.name == spec.name and f"setting '{spec.name}'" in str(exc), exc
                assert exc.source.startswith("flag") and exc.source in str(exc), exc
                refused.add((spec.name, value))
                continue
            assert getattr(settings, spec.name) == value, (spec.name, value)
            assert sources[spec.name].startswith("flag")
    assert refused == REFUSED
    assert walked > 2 * len(KNOWN)


def test_a_value_without_an_implementation_is_refused_with_the_values_that_work():
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"ATTENTION_BACKEND": "fi"})
    assert info.value.name == "attention_backend" and "the values that work: auto, fa, fa,triton, triton, triton,fa" in str(info.value)
    with pytest.raises(SettingsError, match="disable_pynccl.*not supported: backend-sgl has no PyNCCL"):
        load_settings(flags={"disable_pynccl": False})
    assert load_settings(flags={"disable_pynccl": True, "attention_backend": "triton"})[0].disable_pynccl is True


def _source_text() -> tuple[str, str]:
    """(all the distributions' source, the same without the files that declare settings)."""
    files = [p for d in ("core/src", "server/src", "plugins") for p in (ROOT / d).rglob("*.py")
             if "/tests/" not in str(p) and "/src/" in str(p)]
    every = "\n".join(p.read_text(encoding="utf-8") for p in files)
    readers = "\n".join(p.read_text(encoding="utf-8") for p in files if p.name not in ("plugin.py", "settings.py"))
    return every, readers


def test_every_supported_setting_is_read_somewhere():
    every, readers = _source_text()
    unread = [s.name for s in get_registry().settings() if s.unsupported is None
              and not re.search(rf"\.{s.name}\b", every) and not re.search(rf"[\"']{s.name}[\"']", readers)]
    assert unread == []
