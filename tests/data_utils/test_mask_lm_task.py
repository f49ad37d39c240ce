"""The mask_lm task type in task definitions, the reader and the token-id cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_utils.errors import UserError
from data_utils.metrics import Metric, compute_metrics
from data_utils.prepro import encode_examples
from data_utils.readers import read_examples
from data_utils.task_def import LossName, TaskType, load_task_defs, parse_task_def


def test_defaults_of_a_mask_lm_task() -> None:
    task = parse_task_def("text", {"task_type": "mask_lm", "data_format": "premise_only"})
    assert task.task_type is TaskType.MASK_LM
    assert task.loss is LossName.CROSS_ENTROPY
    assert task.adv_loss is LossName.KL  # ALUM's pre-training divergence
    assert task.metrics == (Metric.MLM_ACC, Metric.PERPLEXITY)
    assert task.labels is None and task.n_class == 0
    assert task.mask_probability == 0.15
    assert parse_task_def("text", task.to_dict()) == task
    assert "n_class" not in task.to_dict()


def test_mtdnn_spelling_and_mask_probability() -> None:
    task = parse_task_def(
        "text", {"task_type": "MaskLM", "data_format": "PremiseOnly", "mask_probability": 0.3}
    )
    assert task.task_type is TaskType.MASK_LM and task.mask_probability == 0.3
    assert parse_task_def("text", task.to_dict()) == task


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ({"n_class": 30522}, "n_class", "predicts the encoder's vocabulary"),
        ({"labels": ["a", "b"]}, "labels", "predicts the encoder's vocabulary"),
        ({"data_format": "premise_and_one_hypothesis"}, "data_format", "does not fit a mask_lm task"),
        ({"mask_probability": 0}, "mask_probability", "outside (0.0, 1.0]"),
        ({"mask_probability": 1.5}, "mask_probability", "outside"),
        ({"loss": "mse"}, "loss", "does not fit a mask_lm task"),
        ({"metrics": ["acc"]}, "metrics", "does not apply to a mask_lm task"),
        ({"head": "san"}, "head", "serves classification"),
    ],
)
def test_mistakes_are_one_line_errors_naming_file_task_and_key(
    tmp_path: Path, extra: dict, key: str, problem: str
) -> None:
    entry = {"task_type": "mask_lm", "data_format": "premise_only", **extra}
    path = tmp_path / "tasks.yml"
    import yaml

    path.write_text(yaml.safe_dump({"text": entry}), encoding="utf-8")
    with pytest.raises(UserError) as error:
        load_task_defs(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: task 'text': key '{key}': ")
    assert problem in message


def test_mask_probability_is_refused_on_other_tasks() -> None:
    with pytest.raises(UserError, match="key 'mask_probability': applies to mask_lm tasks only"):
        parse_task_def(
            "x",
            {
                "task_type": "classification",
                "data_format": "premise_only",
                "n_class": 2,
                "mask_probability": 0.2,
            },
        )


def test_raw_text_rows_load_and_labels_are_ignored(tmp_path: Path, write_jsonl, tiny_tokenizer) -> None:
    task = parse_task_def("text", {"task_type": "mask_lm", "data_format": "premise_only"})
    path = write_jsonl(
        tmp_path / "text_train.jsonl",
        [
            {"uid": "a", "premise": "the cat sat on the mat"},
            {"uid": "b", "premise": "good movie", "label": "positive"},  # a label key is ignored
        ],
    )
    result = read_examples(path, task)
    assert [example.label for example in result.examples] == [None, None]
    encoded = encode_examples(result.examples, task, tiny_tokenizer, max_seq_len=16)
    assert encoded.meta["task_type"] == "mask_lm" and not encoded.meta["has_labels"]
    assert len(encoded) == 2


def test_metrics_by_hand_from_logits() -> None:
    # Two masked tokens over a 3-word vocabulary; logits chosen so the log-softmax is easy to write down.
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]))
    gold = np.array([1, 2])
    summary = np.stack([logits.argmax(axis=1), logits[np.arange(2), gold]], axis=1)
    values = compute_metrics(TaskType.MASK_LM, [Metric.MLM_ACC, Metric.PERPLEXITY], summary, gold)
    assert values["mlm_acc"] == pytest.approx(50.0)
    # mean CE = (ln 4 + ln (1/0.6)) / 2 -> perplexity sqrt(4 / 0.6)
    assert values["perplexity"] == pytest.approx((4 / 0.6) ** 0.5)


def test_mask_lm_scores_are_validated() -> None:
    with pytest.raises(ValueError, match=r"\[M, 2\]"):
        compute_metrics(TaskType.MASK_LM, [Metric.MLM_ACC], np.zeros((3, 5)), np.zeros(3))
    with pytest.raises(ValueError, match="log-probabilities"):
        compute_metrics(TaskType.MASK_LM, [Metric.PERPLEXITY], np.array([[1.0, 0.5]]), np.array([1]))
