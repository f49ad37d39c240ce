"""The design's rule, checked: outside the task kinds, neither the model side nor the data side switches on
a task type (``data_utils/`` asks ``TaskDef.kind``; ``enums.py`` only declares the built-in names)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# Where a task type's behaviour must come from its kind (``mt_dnn.tasks.task_kind``), not from a type test.
ASKERS = [
    *sorted((ROOT / "mt_dnn").glob("*.py")),
    *sorted(path for path in (ROOT / "data_utils").glob("*.py") if path.name != "enums.py"),
    ROOT / "predict.py",
    ROOT / "train.py",
    ROOT / "prepro_std.py",
]
MEMBER = re.compile(r"\bTaskType\.[A-Z_]+\b")


def test_no_asker_names_a_task_type_member() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in ASKERS
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if MEMBER.search(line)
    ]
    assert not found, "ask task_kind(task_def) instead:\n" + "\n".join(found)


def test_the_askers_are_found() -> None:
    names = {path.name for path in ASKERS}
    assert {"model.py", "objective.py", "inference.py", "trainer.py", "predict.py"} <= names
    assert {"task_def.py", "readers.py", "prepro.py", "cache.py", "dataset.py", "metrics.py"} <= names
    assert "prepro_std.py" in names
