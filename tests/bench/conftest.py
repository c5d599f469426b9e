"""Fixtures for tests/bench: the benchmarks run end to end as users run them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
