"""The benchmarks' JSON reports as standard JSON: an infinite or undefined figure (a ratio
over zero, `--request-rate inf`) is written as null, never as Infinity or NaN, which strict
parsers (JavaScript's JSON.parse, jq, Go, Rust's serde_json) reject."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every infinite or NaN float, however deep, as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(finite(report), indent=2, allow_nan=False)


def write_json(path: str, report: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        json.dump(finite(report), fh, indent=2, allow_nan=False)
