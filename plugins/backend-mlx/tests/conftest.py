"""backend-mlx tests share the repository's model fixtures (tests/model_fixtures.py) and a
small harness that drives the runner with hand-built ForwardBatch objects.

Every test module starts with `pytest.importorskip` on mlx, so without mlx (or on Linux
without mlx-cpu) the whole directory is skipped with that reason instead of failing."""

import sys
from pathlib import Path

_SHARED = Path(__file__).resolve().parents[3] / "tests"
if str(_SHARED) not in sys.path:
    sys.path.insert(0, str(_SHARED))

from model_fixtures import smollm2_path, tiny_llama_path, tiny_qwen3_path  # noqa: E402, F401

