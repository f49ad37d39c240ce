"""The one registry of task kinds: each kind registers itself once, in its own file."""

from __future__ import annotations

from types import MappingProxyType

from data_utils.enums import TaskType
from data_utils.task_def import TaskDef
from mt_dnn.tasks.base import TaskKind

__all__ = ["TASK_KINDS", "register_task_kind", "task_kind"]

_KINDS: dict[TaskType, TaskKind] = {}
TASK_KINDS = MappingProxyType(_KINDS)
"""Task type -> its kind (read-only view; ``register_task_kind`` adds to it)."""


def register_task_kind(cls: type[TaskKind]) -> type[TaskKind]:
    """Class decorator: register one instance of ``cls`` for ``cls.task_type`` (twice is an error)."""
    if cls.task_type in _KINDS:
        raise ValueError(
            f"task type '{cls.task_type}' is registered twice ({type(_KINDS[cls.task_type]).__name__})"
        )
    _KINDS[cls.task_type] = cls()
    return cls


def task_kind(task: TaskDef | TaskType | str) -> TaskKind:
    """The kind of a task definition (or of a task type by name)."""
    task_type = task.task_type if isinstance(task, TaskDef) else TaskType(task)
    try:
        return _KINDS[task_type]
    except KeyError:
        known = ", ".join(sorted(_KINDS))
        raise ValueError(f"no task kind registered for '{task_type}' (registered: {known})") from None
