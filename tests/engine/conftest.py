"""Engine tests: the helpers live in engine_helpers.py (a unique module name: several test
folders have a conftest.py, so `from conftest import ...` would find the wrong one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine_helpers import make_engine


@pytest.fixture
def engine_factory():
    made = []

    def build(model_path: str, **settings):
        eng = make_engine(model_path, **settings)
        made.append(eng)
        return eng

    yield build
    for eng in made:
        eng.check_invariants()
        eng.shutdown()


@pytest.fixture
def always_draft(request, monkeypatch):
    """Speculative decoding pauses where timed steps say drafting does not pay; tests of what
    drafts do draft whatever the clock says (the gate's own test is named for it)."""
    if "gate" not in request.node.name:
        from minisgl.engine.speculative import Speculation

        monkeypatch.setattr(Speculation, "_pays", lambda self: True)
