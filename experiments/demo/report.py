"""Print a markdown table of a trained model's test metrics next to a trivial baseline, one row per metric.

Usage (from the repo root)::

    python experiments/demo/report.py --data_dir data/demo --predictions_dir out/quickstart/predictions \\
        --task_def experiments/demo/demo_task_def.yml [--split test] [--tasks banking77,vader_movie]

Reads what ``predict.py --output <predictions_dir>/<task>_<split>.predictions.jsonl`` writes: the predictions
and ``<task>_<split>.predictions.metrics.json`` beside them. Baselines come from the canonical JSONL in
``--data_dir`` and are scored with the project's own metric functions on the same split:

- classification: always the train split's majority class (ties: the class declared first), so accuracy is
  that class's share and e.g. f1_macro is what a constant prediction gets;
- regression: always the train mean. Pearson/Spearman of a constant are undefined and shown as ``-``, so the
  table adds an ``mse`` row (lower is better) for the model and for the mean;
- ranking: a uniformly random choice among each row's candidates, as an expectation: acc = mean of 1/K,
  mrr = mean of (1 + 1/2 + ... + 1/K) / K.

Without ``--tasks`` every task of the task definition that has a metrics file is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.enums import TaskType  # noqa: E402
from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from data_utils.metrics import Metric, compute_metrics  # noqa: E402
from data_utils.readers import Example, read_examples  # noqa: E402
from data_utils.task_def import TaskDef  # noqa: E402
from mt_dnn.tasks import load_task_defs  # noqa: E402

MSE = "mse"
MISSING = "-"


@dataclass(frozen=True)
class Baseline:
    """What a trivial predictor scores on the eval split, and a few words on what it is."""

    metrics: dict[str, float]
    description: str


@dataclass(frozen=True)
class TaskReport:
    task: str
    rows: int
    model: dict[str, float]  # metric -> value (nan when undefined)
    baseline: Baseline


def predictions_path(predictions_dir: Path, task: str, split: str) -> Path:
    return predictions_dir / f"{task}_{split}.predictions.jsonl"


def metrics_path(predictions_dir: Path, task: str, split: str) -> Path:
    return predictions_dir / f"{task}_{split}.predictions.metrics.json"


def _labels(task_def: TaskDef, path: Path) -> list[Example]:
    result = read_examples(path, task_def)
    if not result.has_labels:
        raise UserError(f"{path}: task '{task_def.name}': the split has no labels to score a baseline on")
    return result.examples


def classification_baseline(
    task_def: TaskDef, train: Sequence[Example], evaluated: Sequence[Example]
) -> Baseline:
    """Predict the train split's most frequent class for every row (ties: the lowest class index)."""
    counts = Counter(int(example.label) for example in train)  # type: ignore[arg-type]
    majority = min(counts, key=lambda index: (-counts[index], index))
    labels = np.array([int(example.label) for example in evaluated], dtype=np.int64)  # type: ignore[arg-type]
    scores = np.zeros((len(labels), task_def.n_class))
    scores[:, majority] = 1.0
    name = task_def.labels[majority] if task_def.labels else str(majority)
    return Baseline(
        compute_metrics(task_def.kind, task_def.metrics, scores, labels),
        f"always the train majority class {name!r} ({counts[majority] / len(train):.1%} of train)",
    )


def regression_baseline(
    task_def: TaskDef, train: Sequence[Example], evaluated: Sequence[Example]
) -> Baseline:
    """Predict the train mean for every row: correlations are undefined (nan); MSE is the split's spread."""
    mean = float(np.mean([float(example.label) for example in train]))  # type: ignore[arg-type]
    labels = np.array([float(example.label) for example in evaluated])  # type: ignore[arg-type]
    metrics = {str(metric): math.nan for metric in task_def.metrics}
    metrics[MSE] = float(np.mean((labels - mean) ** 2))
    return Baseline(metrics, f"always the train mean {mean:+.3f}")


def ranking_baseline(task_def: TaskDef, evaluated: Sequence[Example]) -> Baseline:
    """The expected acc / mrr of picking (ranking) the candidates of each row uniformly at random."""
    sizes = np.array([len(example.hypothesis or ()) for example in evaluated], dtype=np.float64)
    expected = {
        Metric.ACC: float(np.mean(1.0 / sizes)),
        Metric.MRR: float(np.mean([sum(1.0 / rank for rank in range(1, int(k) + 1)) / k for k in sizes])),
    }
    metrics: dict[str, float] = {}
    for metric in task_def.metrics:
        if Metric(metric) not in expected:
            raise UserError(f"task '{task_def.name}': no random baseline for ranking metric '{metric}'")
        metrics[Metric(metric).value] = 100.0 * expected[Metric(metric)]
    return Baseline(metrics, "a uniformly random candidate (expected value)")


def baseline_for(task_def: TaskDef, data_dir: Path, split: str) -> tuple[Baseline, int]:
    """The task's baseline on ``<data_dir>/<task>_<split>.jsonl`` and that split's row count."""
    evaluated = _labels(task_def, data_dir / f"{task_def.name}_{split}.jsonl")
    if task_def.task_type is TaskType.RANKING:
        return ranking_baseline(task_def, evaluated), len(evaluated)
    train = _labels(task_def, data_dir / f"{task_def.name}_{task_def.train_split}.jsonl")
    if task_def.task_type is TaskType.REGRESSION:
        return regression_baseline(task_def, train, evaluated), len(evaluated)
    return classification_baseline(task_def, train, evaluated), len(evaluated)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror or error}") from None
    except ValueError as error:
        raise UserError(f"{path}: invalid JSON ({error})") from None


def model_metrics(task_def: TaskDef, predictions_dir: Path, split: str) -> tuple[dict[str, float], int]:
    """The metrics predict.py wrote (null -> nan); for regression also the MSE of its predictions."""
    path = metrics_path(predictions_dir, task_def.name, split)
    document = _read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("metrics"), dict):
        raise UserError(f"{path}: key 'metrics': missing (not a predict.py metrics file)")
    if document.get("task") != task_def.name:
        raise UserError(f"{path}: key 'task': holds task {document.get('task')!r}, not '{task_def.name}'")
    metrics = {
        name: math.nan if value is None else float(value) for name, value in document["metrics"].items()
    }
    if task_def.task_type is TaskType.REGRESSION:
        metrics[MSE] = _regression_mse(predictions_path(predictions_dir, task_def.name, split))
    return metrics, int(document.get("rows", -1))


def _regression_mse(path: Path) -> float:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror or error}") from None
    errors = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            errors.append((float(record["prediction"]) - float(record["label"])) ** 2)
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}:{line_no}: expected numeric 'prediction' and 'label'") from None
    if not errors:
        raise UserError(f"{path}: no predictions")
    return float(np.mean(errors))


def build_reports(
    task_defs: dict[str, TaskDef],
    data_dir: Path,
    predictions_dir: Path,
    split: str,
    tasks: Sequence[str] | None,
) -> list[TaskReport]:
    if tasks is None:
        tasks = [name for name in task_defs if metrics_path(predictions_dir, name, split).is_file()]
        if not tasks:
            raise UserError(
                f"{predictions_dir}: no <task>_{split}.predictions.metrics.json "
                "for any task of the task definition"
            )
    reports = []
    for name in tasks:
        if name not in task_defs:
            raise UserError(f"--tasks: task '{name}' is not defined (defined: {', '.join(task_defs)})")
        task_def = task_defs[name]
        model, predicted_rows = model_metrics(task_def, predictions_dir, split)
        baseline, rows = baseline_for(task_def, data_dir, split)
        if predicted_rows != rows:
            raise UserError(
                f"{metrics_path(predictions_dir, name, split)}: key 'rows': {predicted_rows} predicted rows, "
                f"but {data_dir / f'{name}_{split}.jsonl'} has {rows}"
            )
        reports.append(TaskReport(task=name, rows=rows, model=model, baseline=baseline))
    return reports


def _cell(value: float | None, digits: int) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.{digits}f}"


def render_table(reports: Sequence[TaskReport], split: str = "test") -> str:
    lines = ["| task | metric | model | baseline |", "|---|---|---|---|"]
    for report in reports:
        names = list(report.model) + [name for name in report.baseline.metrics if name not in report.model]
        for name in names:
            digits = 3 if name == MSE else 1
            shown = f"{MSE} (lower is better)" if name == MSE else name
            model, baseline = report.model.get(name), report.baseline.metrics.get(name)
            lines.append(f"| {report.task} | {shown} | {_cell(model, digits)} | {_cell(baseline, digits)} |")
    lines.append("")
    lines.append(f"Metrics on the {split} split (0-100 scale except mse). Baselines:")
    for report in reports:
        lines.append(f"- {report.task} ({report.rows} rows): {report.baseline.description}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Test metrics of predict.py's outputs next to trivial baselines."
    )
    parser.add_argument("--data_dir", type=Path, required=True, help="canonical <task>_<split>.jsonl folder")
    parser.add_argument(
        "--predictions_dir",
        type=Path,
        required=True,
        help="folder of <task>_<split>.predictions[.metrics].json(l)",
    )
    parser.add_argument("--task_def", required=True, help="task-definition YAML")
    parser.add_argument("--split", default="test", help="the split that was predicted (default: test)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: all with predictions)")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    task_defs = load_task_defs(args.task_def)
    tasks = None
    if args.tasks is not None:
        tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
        if not tasks:
            raise UserError("--tasks: no task named")
    reports = build_reports(task_defs, args.data_dir, args.predictions_dir, args.split, tasks)
    table = render_table(reports, args.split)
    print(table)
    return table


if __name__ == "__main__":
    main()
