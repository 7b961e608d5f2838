"""Writing a benchmark's result: JSON without NaN (``null`` instead), folders created."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def no_nan(obj: Any) -> Any:
    """NaN → ``None`` in nested dicts/lists (JSON has no NaN)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [no_nan(v) for v in obj]
    return obj


def write_json(result: dict[str, Any], path: str | Path | None) -> dict[str, Any]:
    """``result`` with NaN as ``None``, written to ``path`` when given; returns it."""
    out: dict[str, Any] = no_nan(result)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=2))
    return out
