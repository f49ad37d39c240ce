"""The robustness benchmark's output, read for the report's plot: the metric at each perturbation radius, per
method::

    {"task": "banking77", "metric": "acc", "radii": [0, 0.01, 0.05],
     "methods": {"plain": [80.1, 71.0, 40.2], "smart": [...]}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_utils.errors import UserError


@dataclass(frozen=True)
class RobustnessCurves:
    task: str
    metric: str
    radii: tuple[float, ...]
    methods: dict[str, tuple[float, ...]]  # method -> the metric at each radius


def _numbers(path: Path, key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{path}: key '{key}': expected a non-empty list of numbers")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise UserError(f"{path}: key '{key}': expected finite numbers, got {item!r}")
    return tuple(float(item) for item in value)


def load_robustness(path: Path) -> RobustnessCurves:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror or error}") from None
    except ValueError as error:
        raise UserError(f"{path}: not JSON: {error}") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected an object with keys task, metric, radii, methods")
    for key in ("task", "metric"):
        if not isinstance(document.get(key), str) or not document[key]:
            raise UserError(f"{path}: key '{key}': expected a name")
    radii = _numbers(path, "radii", document.get("radii"))
    methods = document.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise UserError(f"{path}: key 'methods': expected an object of method -> list of scores")
    curves: dict[str, tuple[float, ...]] = {}
    for name, values in methods.items():
        curves[name] = _numbers(path, f"methods.{name}", values)
        if len(curves[name]) != len(radii):
            raise UserError(
                f"{path}: key 'methods.{name}': {len(curves[name])} values for {len(radii)} radii"
            )
    return RobustnessCurves(document["task"], document["metric"], radii, curves)
