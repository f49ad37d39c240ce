"""The one registry of task kinds (``data_utils.kinds.KINDS``): each kind registers itself once, in its own
file, with ``register_task_kind``."""

from __future__ import annotations

from collections.abc import Mapping

from data_utils.kinds import KINDS, get_kind, register_kind
from data_utils.task_def import TaskDef
from mt_dnn.tasks.base import TaskKind

__all__ = ["TASK_KINDS", "register_task_kind", "task_kind"]

TASK_KINDS: Mapping[str, TaskKind] = KINDS  # type: ignore[assignment] # every kind registered here is one
"""Kind name (a ``TaskType`` for the built-ins) -> its kind: the same read-only registry as ``KINDS``."""


def register_task_kind(cls: type[TaskKind]) -> type[TaskKind]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (twice is an error)."""
    if not issubclass(cls, TaskKind):
        raise TypeError(f"{cls.__name__} is not a TaskKind")
    register_kind(cls)
    return cls


def task_kind(task: TaskDef | str) -> TaskKind:
    """The kind of a task definition (or of a task type by name)."""
    kind = task.kind if isinstance(task, TaskDef) else get_kind(str(task))
    if not isinstance(kind, TaskKind):
        raise ValueError(f"task type '{kind.name}' has no model side (its kind is not an mt_dnn TaskKind)")
    return kind
