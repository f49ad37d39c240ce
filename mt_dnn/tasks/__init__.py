"""Task kinds: one registered component per task type (see ``base.TaskKind``), looked up by ``task_kind``.

Importing this package registers the built-in kinds; each lives in its own module. ``load_task_defs`` and
``parse_task_def`` parse task definitions with them registered.
"""

from mt_dnn.tasks import (  # noqa: F401 - they register
    classification,
    mask_lm,
    ranking,
    regression,
    sequence_labeling,
)
from mt_dnn.tasks.base import (
    BatchScores,
    BatchShape,
    EncoderOutput,
    HeadOptions,
    HFExport,
    ModelInputs,
    Predictions,
    TaskKind,
)
from mt_dnn.tasks.definitions import load_task_defs, parse_task_def
from mt_dnn.tasks.registry import TASK_KINDS, register_task_kind, task_kind
from mt_dnn.tasks.span import kind as span_kind  # noqa: F401 - it registers

__all__ = [
    "TASK_KINDS",
    "BatchScores",
    "BatchShape",
    "EncoderOutput",
    "HFExport",
    "HeadOptions",
    "ModelInputs",
    "Predictions",
    "TaskKind",
    "load_task_defs",
    "parse_task_def",
    "register_task_kind",
    "task_kind",
]
