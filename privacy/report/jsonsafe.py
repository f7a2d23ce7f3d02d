"""Strict JSON for the report: NaN/inf become null so every consumer (browsers, jq) can parse it."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` made only of JSON types; non-finite floats become None."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return json_safe(obj.item())
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    return str(obj)


def dumps(obj: Any) -> str:
    """Indented, strict JSON (raises rather than writing NaN)."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def finite(value: Any) -> float | None:
    """A float, or None when missing or not finite (how the run writes 'no value')."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
