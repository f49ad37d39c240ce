"""Task definitions parsed with every task kind registered: what the CLIs, the model and the experiments call.

``data_utils.task_def`` parses against the global kind registry, which only importing this package fills
(``data_utils`` knows no model, so it cannot import the kinds itself); these wrappers make the order of
imports not matter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_utils import task_def as _task_def
from data_utils.task_def import TaskDef

__all__ = ["load_task_defs", "parse_task_def"]


def load_task_defs(path: str | Path, **options: Any) -> dict[str, TaskDef]:
    """``data_utils.task_def.load_task_defs`` over the registered kinds (built-in and any imported since)."""
    return _task_def.load_task_defs(path, **options)


def parse_task_def(name: str, entry: object, **options: Any) -> TaskDef:
    """``data_utils.task_def.parse_task_def`` over the registered kinds."""
    return _task_def.parse_task_def(name, entry, **options)
