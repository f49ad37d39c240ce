from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from data_utils.errors import UserError
from data_utils.metrics import Metric
from data_utils.task_def import (
    DataFormat,
    HeadType,
    LossName,
    TaskDef,
    TaskType,
    load_task_defs,
    parse_task_def,
)

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tasks.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_mtdnn_glue_file_loads_unchanged() -> None:
    defs = load_task_defs(FIXTURES / "mtdnn_glue_task_def.yml", default_dropout_p=0.1)
    assert list(defs) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst", "stsb", "wnli"]

    mnli = defs["mnli"]
    assert mnli.task_type is TaskType.CLASSIFICATION
    assert mnli.data_format is DataFormat.PREMISE_AND_ONE_HYPOTHESIS
    assert mnli.labels == ("contradiction", "neutral", "entailment")
    assert mnli.n_class == 3
    assert mnli.head is HeadType.SAN
    assert mnli.dropout_p == 0.3
    assert mnli.split_names == ("train", "matched_dev", "mismatched_dev", "matched_test", "mismatched_test")
    assert mnli.dev_splits == ("matched_dev", "mismatched_dev")
    assert mnli.test_splits == ("matched_test", "mismatched_test")
    assert mnli.loss is LossName.CROSS_ENTROPY
    assert mnli.adv_loss is LossName.SYM_KL
    assert not hasattr(mnli, "kd_loss")  # accepted for mt-dnn's files, no effect

    stsb = defs["stsb"]
    assert stsb.task_type is TaskType.REGRESSION
    assert stsb.n_class == 1
    assert stsb.labels is None
    assert stsb.metrics == (Metric.PEARSON, Metric.SPEARMAN)
    assert stsb.loss is LossName.MSE and stsb.adv_loss is LossName.MSE

    cola = defs["cola"]
    assert cola.data_format is DataFormat.PREMISE_ONLY
    assert cola.metrics == (Metric.ACC, Metric.MCC)
    assert cola.dropout_p == 0.05
    assert cola.head is HeadType.LINEAR
    assert defs["mrpc"].metrics == (Metric.ACC, Metric.F1)
    assert defs["mrpc"].split_names == ("train", "dev", "test")


def test_absent_dropout_takes_the_global_default_not_none() -> None:
    defs = load_task_defs(FIXTURES / "mtdnn_glue_task_def.yml", default_dropout_p=0.25)
    assert defs["rte"].dropout_p == 0.25
    assert defs["cola"].dropout_p == 0.05


def test_our_lowercase_spelling_and_defaults(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
        intents:
          task_type: classification
          data_format: premise_only
          labels: [a, b, c]
          metrics: [acc, f1_macro]
          head: san
          loss_weight: 0.5
          adv_alpha: 2.0
          adv_k: 2
        score:
          task_type: regression
          data_format: premise_and_one_hypothesis
        choice:
          task_type: ranking
          data_format: premise_and_multi_hypothesis
        """,
    )
    defs = load_task_defs(path)
    intents = defs["intents"]
    assert intents.n_class == 3
    assert intents.label_index() == {"a": 0, "b": 1, "c": 2}
    assert intents.metrics == (Metric.ACC, Metric.F1_MACRO)
    assert intents.loss_weight == 0.5
    assert intents.adv.alpha == 2.0 and intents.adv.k == 2 and intents.adv.epsilon is None
    assert defs["score"].metrics == (Metric.PEARSON, Metric.SPEARMAN)
    assert defs["score"].adv_loss is LossName.MSE
    choice = defs["choice"]
    assert choice.n_class == 1
    assert choice.loss is LossName.RANK_CROSS_ENTROPY
    assert choice.adv_loss is LossName.SYM_KL
    assert choice.metrics == (Metric.ACC, Metric.MRR)


def test_to_dict_round_trips() -> None:
    for name, task in load_task_defs(FIXTURES / "mtdnn_glue_task_def.yml").items():
        again = parse_task_def(name, task.to_dict())
        assert again == task
        assert isinstance(again, TaskDef)


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  drop_out: 0.1",
            "drop_out",
            "unknown key",
        ),
        ("task_type: Clasification\n  data_format: premise_only\n  n_class: 2", "task_type", "unknown value"),
        (
            "task_type: classification\n  data_format: PremiseAndTwo\n  n_class: 2",
            "data_format",
            "unknown value",
        ),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 3\n  labels: [a, b]",
            "n_class",
            "2 labels",
        ),
        ("task_type: regression\n  data_format: premise_only\n  n_class: 2", "n_class", "must be 1"),
        ("task_type: ranking\n  data_format: premise_and_one_hypothesis", "data_format", "does not fit"),
        ("data_format: premise_only\n  n_class: 2", "task_type", "missing required key"),
        ("task_type: classification\n  n_class: 2", "data_format", "missing required key"),
        ("task_type: classification\n  data_format: premise_only", "n_class", "missing required key"),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  metric_meta: [Pearson]",
            "metrics",
            "does not apply",
        ),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  metric_meta: [ACCURACY]",
            "metrics",
            "unknown value",
        ),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  loss: MseCriterion",
            "loss",
            "does not fit",
        ),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  loss: FooCriterion",
            "loss",
            "unknown value",
        ),
        ("task_type: regression\n  data_format: premise_only\n  enable_san: true", "head", "SAN head"),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  kd_loss: FooCriterion",
            "kd_loss",
            "unknown value",
        ),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  enable_san: maybe",
            "enable_san",
            "true or false",
        ),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  dropout_p: 1.5",
            "dropout_p",
            "outside",
        ),
        (
            "task_type: classification\n  data_format: premise_only\n  labels: [true, false]",
            "labels",
            "quote it",
        ),
        ("task_type: classification\n  data_format: premise_only\n  labels: [0.5, 1]", "labels", "quote it"),
        ("task_type: classification\n  data_format: premise_only\n  labels: [a, a]", "labels", "duplicate"),
        ("task_type: regression\n  data_format: premise_only\n  labels: [a, b]", "labels", "numeric labels"),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  adv_k: 0",
            "adv_k",
            "integer >= 1",
        ),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  split_names: [train, train]",
            "split_names",
            "twice",
        ),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  loss_weight: 0",
            "loss_weight",
            "outside",
        ),
        (
            "task_type: classification\n  data_format: premise_only\n  n_class: 2\n  head: san\n  enable_san: true",
            "enable_san",
            "given twice",
        ),
    ],
)
def test_validation_errors_name_file_task_and_key(tmp_path: Path, body: str, key: str, fragment: str) -> None:
    path = write_yaml(
        tmp_path,
        f"good:\n  task_type: classification\n  data_format: premise_only\n  n_class: 2\nbad:\n  {body}\n",
    )
    with pytest.raises(UserError) as caught:
        load_task_defs(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: task 'bad': key '{key}'"), message
    assert fragment in message, message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- a\n- b\n", "expected a mapping"),
        ("", "got empty"),
        ("{}\n", "defines no tasks"),
        ("task: [unclosed\n", "invalid YAML"),
    ],
)
def test_document_level_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(UserError, match=fragment) as caught:
        load_task_defs(path)
    assert str(caught.value).startswith(str(path))


def test_task_entry_must_be_a_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "rte: classification\n")
    with pytest.raises(UserError, match=r"task 'rte': expected a mapping"):
        load_task_defs(path)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read"):
        load_task_defs(tmp_path / "absent.yml")


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "rte:\n  task_type: classification\n  data_format: premise_only\n  n_clas: 2\n"
    )
    with pytest.raises(UserError, match="did you mean 'n_class'"):
        load_task_defs(path)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "rte: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_task_defs(path)


def test_every_shipped_task_def_parses() -> None:
    shipped = sorted((REPO / "experiments").rglob("*task_def*.yml"))
    assert shipped
    for path in shipped:
        assert load_task_defs(path), path


def test_every_shipped_run_config_parses() -> None:
    from mt_dnn.config import load_config_file

    # Quality grids (experiments/quality/grid*.yml) are not run configs: tests/experiments checks they load.
    configs = sorted(
        p
        for p in (REPO / "experiments").rglob("*.yml")
        if "task_def" not in p.name and p.parent.name != "quality"
    )
    assert configs
    for path in configs:
        assert load_config_file(path), path


def test_a_user_mistake_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "rte:\n  task_type: classification\n  data_format: premise_only\n  n_class: 2\n  bogus: 1\n"
    )
    script = (
        "import sys; from data_utils.errors import exit_on_user_error; "
        "from data_utils.task_def import load_task_defs; exit_on_user_error(load_task_defs)(sys.argv[1])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {path}: task 'rte': key 'bogus': unknown key"]
