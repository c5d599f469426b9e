"""Fixtures for tests/reliability: each test starts its own real server (they kill engines
and stop servers), on loopback, with a tiny random model."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
