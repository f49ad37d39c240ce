"""The data side of task kinds: the registry, ``TaskDef.kind`` injection, and a kind that is not built in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from data_utils.enums import DataFormat, TaskType
from data_utils.errors import UserError
from data_utils.kinds import KINDS, DataKind, find_kind, get_kind
from data_utils.metrics import Metric, compute_metrics
from data_utils.task_def import load_task_defs, parse_task_def


class Tagging(DataKind):
    """A toy kind, known only to the mapping a test passes (never registered)."""

    name = "tagging"
    aliases = ("tagger",)
    default_metrics = (Metric.ACC,)
    allowed_metrics = frozenset({Metric.ACC})
    yaml_keys = frozenset({"window"})

    def own_fields(self, raw, error):  # type: ignore[no-untyped-def]
        if raw.get("window") is not None and raw["window"] != 3:
            raise error("window", "only 3 is supported")
        return {}


TOY = {"tagging": Tagging()}


def test_the_registry_holds_every_built_in_type() -> None:
    for task_type in TaskType:
        kind = KINDS[task_type]
        assert kind.name is task_type and get_kind(task_type.value) is kind


@pytest.mark.parametrize(
    ("spelling", "name"),
    [("Classification", "classification"), ("MaskLM", "mask_lm"), ("SeqenceLabeling", "sequence_labeling"),
     ("sequence_labeling", "sequence_labeling")],
)  # fmt: skip
def test_mtdnn_spellings_find_their_kind(spelling: str, name: str) -> None:
    assert find_kind(spelling).name == name


def test_a_parsed_task_def_carries_its_kind_outside_equality_and_to_dict() -> None:
    entry = {"task_type": "classification", "data_format": "premise_only", "n_class": 2}
    task_def = parse_task_def("t", entry)
    assert task_def.kind is KINDS[TaskType.CLASSIFICATION]
    assert "kind" not in task_def.to_dict() and "kind" not in repr(task_def)
    other = dataclasses.replace(task_def, kind=Tagging())
    assert other == task_def and dataclasses.replace(task_def, dropout_p=0.2).kind is task_def.kind
    assert parse_task_def("t", task_def.to_dict()) == task_def


def test_kinds_none_means_the_registry_and_a_mapping_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "tasks.yml"
    path.write_text("pos:\n  task_type: tagger\n  data_format: premise_only\n  n_class: 3\n  window: 3\n")
    task_def = load_task_defs(path, kinds=TOY)["pos"]
    assert isinstance(task_def.kind, Tagging) and task_def.task_type == "tagging" and task_def.n_class == 3
    assert task_def.metrics == (Metric.ACC,)
    with pytest.raises(UserError, match=r"tasks\.yml: task 'pos': key 'window': unknown key"):
        load_task_defs(path)  # the registry's kinds own no 'window'
    path.write_text("pos:\n  task_type: tagger\n  data_format: premise_only\n  n_class: 3\n")
    with pytest.raises(UserError, match=r"tasks\.yml: task 'pos': key 'task_type': unknown value 'tagger'"):
        load_task_defs(path)
    bad = tmp_path / "bad.yml"
    bad.write_text("pos:\n  task_type: tagging\n  data_format: premise_only\n  n_class: 3\n  window: 4\n")
    with pytest.raises(UserError, match=r"bad\.yml: task 'pos': key 'window': only 3 is supported"):
        load_task_defs(bad, kinds=TOY)


def test_a_key_another_kind_owns_is_refused_with_its_owner() -> None:
    entry = {
        "task_type": "classification",
        "data_format": "premise_only",
        "n_class": 2,
        "mask_probability": 0.2,
    }
    with pytest.raises(UserError, match="key 'mask_probability': applies to mask_lm tasks only"):
        parse_task_def("t", entry)
    with pytest.raises(UserError, match="key 'windw': unknown key .did you mean 'window'"):
        parse_task_def(
            "t", {"task_type": "tagging", "data_format": "premise_only", "n_class": 2, "windw": 3}, kinds=TOY
        )


def test_a_kind_data_format_and_metrics_rules() -> None:
    entry = {"task_type": "tagging", "data_format": "premise_and_one_hypothesis", "n_class": 2}
    with pytest.raises(UserError, match="does not fit a tagging task"):
        parse_task_def("t", entry, kinds=TOY)
    entry = {"task_type": "tagging", "data_format": "premise_only", "n_class": 2, "metrics": ["mcc"]}
    with pytest.raises(UserError, match="metric 'mcc' does not apply to a tagging task"):
        parse_task_def("t", entry, kinds=TOY)
    assert DataFormat.PREMISE_ONLY in Tagging.formats


def test_metrics_ask_the_kind() -> None:
    import numpy as np

    scores, labels = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0])
    assert compute_metrics(Tagging(), ["acc"], scores, labels) == {"acc": 50.0}
    with pytest.raises(ValueError, match="does not apply to task type 'tagging'"):
        compute_metrics(Tagging(), ["f1"], scores, labels)
