"""Task kinds, the data side: what ``data_utils`` needs from one task type, and the one registry of kinds.

A ``DataKind`` says, for its type: the YAML keys it owns and their defaults, its class count and label codec,
the files and data formats it reads, how rows become cached arrays and cached arrays become dataset rows and
batch fields, and which metrics it allows and how it validates their inputs. ``task_def``, ``readers``,
``prepro``, ``cache``, ``dataset`` and ``metrics`` ask the kind (``TaskDef.kind``) instead of switching on
the type. The kinds themselves live with their model side, one class per type in one file under
``mt_dnn/tasks/`` (``mt_dnn.tasks.TaskKind`` extends ``DataKind``); importing ``mt_dnn.tasks`` registers
them. ``data_utils`` knows no model: it only sees this interface and the registry.

The defaults below are those of a one-label-per-row task with integer class labels (classification); a kind
overrides what differs.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from data_utils.enums import DataFormat, HeadType, LossName, normalise_spelling
from data_utils.errors import RowError, UserError

if TYPE_CHECKING:
    from data_utils.cache import EncodedSplit
    from data_utils.dataset import Row
    from data_utils.readers import ReadResult
    from data_utils.task_def import TaskDef

__all__ = [
    "KINDS",
    "DataKind",
    "ErrorFactory",
    "LabelParser",
    "as_index",
    "checked_n_class",
    "class_count",
    "find_kind",
    "integer_labels",
    "single_output",
    "get_kind",
    "register_kind",
]

ErrorFactory = Callable[[str | None, str], UserError]
"""``error(key, problem)``: the ``UserError`` naming the task-definition file, the task and the key."""

LabelParser = Callable[[object, "str | tuple[str, ...] | None"], Any]
"""``parse(raw label, hypothesis) -> label``; raises ``RowError`` for a label the task cannot have."""

SUFFIXES: tuple[str, ...] = (".jsonl", ".tsv")
_SHOWN_LABELS = 5


class DataKind(ABC):  # noqa: B024 - every hook has a default; a kind overrides what differs
    """The data side of one task type; one instance per type, stateless, registered once."""

    name: ClassVar[str]
    # Other spellings of ``task_type:`` (normalised: lowercase snake_case), e.g. mt-dnn's.
    aliases: ClassVar[tuple[str, ...]] = ()
    formats: ClassVar[tuple[DataFormat, ...]] = (DataFormat.PREMISE_ONLY,)
    # The first metric of ``default_metrics`` is the default ``--best_metric``.
    default_metrics: ClassVar[tuple[str, ...]] = ()
    allowed_metrics: ClassVar[frozenset[str]] = frozenset()
    # The task losses and the output divergences it allows; the first of each is the default.
    losses: ClassVar[tuple[LossName, ...]] = (LossName.CROSS_ENTROPY,)
    divergences: ClassVar[tuple[LossName, ...]] = (LossName.SYM_KL,)
    heads: ClassVar[tuple[HeadType, ...]] = (HeadType.LINEAR,)
    # YAML keys only this kind takes (``own_fields`` parses them); other kinds refuse them.
    yaml_keys: ClassVar[frozenset[str]] = frozenset()
    # Its training rows carry their own targets (the text), so labels in the files are ignored.
    self_labelled: ClassVar[bool] = False
    # A row holds several sequences (ranking: one per candidate); batches get ``candidate_mask``.
    multi_sequence: ClassVar[bool] = False
    # The split-file suffixes it reads, in the order they are looked for.
    suffixes: ClassVar[tuple[str, ...]] = SUFFIXES

    @property
    def task_type(self) -> str:
        return self.name

    # ---------------------------------------------------------------- YAML
    def n_class(self, given: object, labels: tuple[str, ...] | None, error: ErrorFactory) -> int:
        """The task's number of outputs from its ``n_class:`` (``given``, unchecked) and ``labels:``."""
        return class_count(given, labels, error, self.name)

    def own_fields(self, raw: Mapping[str, object], error: ErrorFactory) -> dict[str, Any]:
        """``TaskDef`` field values parsed from the kind's ``yaml_keys`` (none by default)."""
        return {}

    def own_dict(self, task_def: TaskDef) -> dict[str, Any]:
        """The kind's part of ``TaskDef.to_dict`` (its class count, or its own keys)."""
        return {"n_class": task_def.n_class}

    # ---------------------------------------------------------------- reading and encoding
    def read_split(self, path: Path, task_def: TaskDef, *, skip_bad_rows: bool = False) -> ReadResult:
        """Read one split file (default: the canonical JSONL / mt-dnn TSV rows of ``data_utils.readers``)."""
        from data_utils.readers import read_examples  # readers imports task_def, which imports this

        return read_examples(path, task_def, skip_bad_rows=skip_bad_rows)

    def label_parser(self, task_def: TaskDef) -> LabelParser:
        """Raw label -> class index, through ``labels:`` when the task names them (a name wins over an index
        that reads the same)."""
        names = task_def.label_index()
        n_class = task_def.n_class
        if names is not None:
            shown = ", ".join(repr(name) for name in list(names)[:_SHOWN_LABELS])
            more = ", ..." if len(names) > _SHOWN_LABELS else ""
            allowed = f"one of {shown}{more} or an index in [0, {n_class})"
        else:
            allowed = f"a class index in [0, {n_class})"

        def parse(value: object, hypothesis: object) -> int:
            if names is not None and type(value) in (str, int):
                index = names.get(value if type(value) is str else str(value))
                if index is not None:
                    return index
            index = as_index(value)
            if index is None or not 0 <= index < n_class:
                raise RowError("label", f"{value!r} is not a label of the task (expected {allowed})")
            return index

        return parse

    def encode_split(
        self, examples: Sequence[Any], task_def: TaskDef, tokenizer: Any, **options: Any
    ) -> EncodedSplit:
        """Encode one split's examples (default: ``prepro.encode_examples``, the tokenizer's pair call)."""
        from data_utils.prepro import encode_examples  # prepro imports task_def, which imports this

        return encode_examples(examples, task_def, tokenizer, **options)

    def label_array(self, labels: list[Any], has_labels: bool) -> np.ndarray:
        """The cached ``labels.npy`` of a split: int64 indices, ``-1`` when unlabelled."""
        values = labels if has_labels else [-1] * len(labels)
        return np.array(values, dtype=np.int64).reshape(len(labels))

    # ---------------------------------------------------------------- the cache
    def cached_label_problem(self, split: EncodedSplit, task_def: TaskDef) -> tuple[str, str] | None:
        """``(key, problem)`` when a labelled split's cached labels do not fit the task, else ``None``."""
        labels = split.labels
        if not np.issubdtype(labels.dtype, np.integer):
            return "labels", f"holds {labels.dtype}, expected class indices"
        return _out_of_range(split, self.label_bounds(split, task_def), self.label_bounds_text(task_def))

    def label_bounds(self, split: EncodedSplit, task_def: TaskDef) -> np.ndarray | int:
        return task_def.n_class

    def label_bounds_text(self, task_def: TaskDef) -> str:
        return f"the task's {task_def.n_class} classes"

    # ---------------------------------------------------------------- dataset rows and batches
    def row_label(self, split: EncodedSplit, index: int) -> Any:
        """Row ``index``'s label as a ``Row`` holds it (``None`` when unlabelled)."""
        value = int(split.labels[index])
        return None if value < 0 else value

    def row_extra(self, split: EncodedSplit, index: int) -> Mapping[str, np.ndarray]:
        """Row ``index``'s kind-specific arrays (from the cache's named arrays); none by default."""
        return {}

    def collate_labels(
        self, task_def: TaskDef, rows: Sequence[Row], n_sequences: np.ndarray, width: int
    ) -> torch.Tensor:
        """The batch's labels from rows that all have one (``n_sequences``: sequences per row; ``width``: the
        batch's padded sequence length)."""
        labels = np.array([row.label for row in rows], dtype=np.int64)
        bound = n_sequences if self.multi_sequence else task_def.n_class
        bad = np.flatnonzero((labels < 0) | (labels >= bound))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"task '{task_def.name}': row '{rows[i].uid}' has label {labels[i]} out of range"
            )
        return torch.from_numpy(labels)

    def collate_extra(self, task_def: TaskDef, rows: Sequence[Row], width: int) -> dict[str, torch.Tensor]:
        """Kind-specific batch fields (``Batch.extra``), padded to ``width`` tokens; none by default."""
        return {}

    # ---------------------------------------------------------------- metrics
    def validate_scores(self, scores: np.ndarray) -> np.ndarray:
        """Scores as float64 ``[N, C]`` (finite), or a ``ValueError`` (the caller checked N >= 1, no NaN)."""
        if scores.ndim != 2 or scores.shape[1] == 0:
            raise ValueError(f"{self.name} scores must be shaped [N, C] with C >= 1, got {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError(f"{self.name} scores contain inf")
        return scores

    def validate_labels(self, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Labels as int64 indices into the scores' last axis, or a ``ValueError``."""
        labels = integer_labels(self.name, labels)
        width = scores.shape[1]
        if labels.min() < 0 or labels.max() >= width:
            raise ValueError(
                f"{self.name} labels must lie in [0, {width}), got {labels.min()}..{labels.max()}"
            )
        return labels

    def predicted(self, scores: np.ndarray) -> np.ndarray:
        """Validated scores -> the predictions (default: the argmax, first index on ties)."""
        return scores.argmax(axis=1).astype(np.int64)


def integer_labels(kind: str, labels: np.ndarray) -> np.ndarray:
    """``labels`` as int64, or a ``ValueError`` when they are not integral."""
    as_float = labels.astype(np.float64)
    if not np.isfinite(as_float).all() or (as_float != np.round(as_float)).any():
        raise ValueError(f"{kind} labels must be integer indices")
    return as_float.astype(np.int64)


def _out_of_range(split: EncodedSplit, bound: np.ndarray | int, what: str) -> tuple[str, str] | None:
    labels = split.labels
    bad = np.flatnonzero((labels < 0) | (labels >= bound))
    if not bad.size:
        return None
    row = int(bad[0])
    return "labels", f"row {row} (uid {str(split.uids[row])!r}) has label {int(labels[row])}, outside {what}"


def as_index(value: object) -> int | None:
    """An integer index from an int, an integral float or an integer string; ``None`` otherwise."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is str:
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
    return None


def checked_n_class(given: object, error: ErrorFactory) -> int | None:
    """``n_class:`` as a positive integer, ``None`` when absent."""
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 1):
        raise error("n_class", f"expected a positive integer, got {given!r}")
    return given  # type: ignore[return-value]


def class_count(
    given: object, labels: tuple[str, ...] | None, error: ErrorFactory, kind: str, *, minimum: int = 2
) -> int:
    """A class count from ``n_class:`` and ``labels:`` (either, or both when they agree)."""
    n_class = checked_n_class(given, error)
    if labels is not None:
        if n_class is not None and n_class != len(labels):
            raise error("n_class", f"n_class is {n_class} but {len(labels)} labels are listed")
        n_class = len(labels)
    elif n_class is None:
        raise error("n_class", f"missing required key (a {kind} task needs n_class or labels)")
    if n_class < minimum:
        raise error("n_class", f"a {kind} task needs at least {minimum} classes, got {n_class}")
    return n_class


# --- the registry ------------------------------------------------------------------------------------------

_KINDS: dict[str, DataKind] = {}
KINDS: Mapping[str, DataKind] = MappingProxyType(_KINDS)
"""Kind name -> its kind (read-only; ``register_kind`` adds to it, importing ``mt_dnn.tasks`` fills it)."""


def register_kind(cls: type[DataKind]) -> type[DataKind]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (twice is an error)."""
    if cls.name in _KINDS:
        raise ValueError(f"task type '{cls.name}' is registered twice ({type(_KINDS[cls.name]).__name__})")
    _KINDS[cls.name] = cls()
    return cls


def get_kind(name: str, kinds: Mapping[str, DataKind] | None = None) -> DataKind:
    """The kind registered as ``name`` (exact name); ``ValueError`` listing the registered ones."""
    registry = KINDS if kinds is None else kinds
    try:
        return registry[str(name)]
    except KeyError:
        known = ", ".join(registry) or "none: import mt_dnn.tasks to register the built-in kinds"
        raise ValueError(f"no task kind registered for '{name}' (registered: {known})") from None


def find_kind(value: object, kinds: Mapping[str, DataKind] | None = None) -> DataKind:
    """The kind a ``task_type:`` value names: our spelling, CamelCase (``Classification``) or an alias.

    Raises ``ValueError`` whose message lists the accepted names."""
    registry = KINDS if kinds is None else kinds
    if isinstance(value, str):
        key = normalise_spelling(value)
        for candidate in (value, key):
            if candidate in registry:
                return registry[candidate]
        for kind in registry.values():
            if key in kind.aliases or key.replace("_", "") in kind.aliases:
                return kind
    accepted = ", ".join(registry) or "none registered: import mt_dnn.tasks"
    raise ValueError(f"unknown value {value!r} (expected one of: {accepted})")


def single_output(
    given: object, labels: tuple[str, ...] | None, error: ErrorFactory, kind: str, what: str
) -> int:
    """The class count of a kind with numeric labels and one output (``what``: per row or per candidate)."""
    n_class = checked_n_class(given, error)
    if labels is not None:
        raise error("labels", f"a {kind} task has numeric labels; remove 'labels'")
    if n_class is not None and n_class != 1:
        raise error("n_class", f"a {kind} task has {what}: n_class must be 1, got {n_class}")
    return 1
