"""Fixtures for model-level tests: a tiny random BERT encoder with heads, and a checkpoint of it.

- ``tiny_mtdnn_task_defs``: ``{name: TaskDef}`` for the top-level ``TASK_ENTRIES`` tasks, in that order:
  ``single`` (classification, premise_only, labels negative/positive), ``pair`` (classification,
  premise_and_one_hypothesis, labels entailment/neutral/contradiction), ``score`` (regression) and
  ``rank`` (ranking).
- ``make_tiny_mtdnn``: ``make_tiny_mtdnn(task_defs=None, *, seed=0, options=None, weight_std=0.2)`` ->
  ``MTDNNModel`` on a fresh random 2-layer, 32-wide BERT whose vocabulary is the tiny tokenizer's, in eval
  mode (``build_tiny_mtdnn``).
- ``tiny_mtdnn_checkpoint``: a session-wide checkpoint folder of ``make_tiny_mtdnn()`` saved with the tiny
  tokenizer (``MTDNNModel.load`` / ``load_tokenizer`` read it). Read-only: copy it before changing it.

Tests outside ``tests/mt_dnn/`` do not see these fixtures; they import the plain builders
(``tiny_task_defs``, ``build_tiny_mtdnn``, ``save_tiny_checkpoint``) from ``tests.mt_dnn.conftest``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from data_utils.task_def import TaskDef, parse_task_def
from mt_dnn.model import ModelOptions, MTDNNModel
from tests.conftest import TASK_ENTRIES, TINY_VOCAB

TinyModelFactory = Callable[..., MTDNNModel]


def tiny_bert_config(**overrides: Any) -> Any:
    """A 2-layer, 32-wide BERT config over the tiny tokenizer's vocabulary."""
    from transformers import BertConfig

    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    return BertConfig(vocab_size=len(TINY_VOCAB), max_position_embeddings=128, **{**sizes, **overrides})


def tiny_task_defs() -> dict[str, TaskDef]:
    """The four ``TASK_ENTRIES`` tasks as ``TaskDef``s (importable by tests outside this folder)."""
    return {name: parse_task_def(name, entry) for name, entry in TASK_ENTRIES.items()}


def build_tiny_mtdnn(
    task_defs: Mapping[str, TaskDef] | None = None,
    *,
    seed: int = 0,
    options: ModelOptions | None = None,
    weight_std: float = 0.2,
) -> MTDNNModel:
    """A random 2-layer, 32-wide BERT over the tiny tokenizer's vocabulary with one head per task, in eval
    mode; the same ``seed`` gives the same weights (the global RNG state is left as it was).

    Weights are drawn with std ``weight_std`` (encoder and head linear layers), wider than BERT's 0.02, so
    that outputs differ clearly between inputs (at 0.02 two rows' scores can agree to 1e-7).
    """
    from transformers import BertModel

    config = tiny_bert_config(initializer_range=weight_std)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MTDNNModel(BertModel(config), task_defs or tiny_task_defs(), options)
        for module in model.heads.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=weight_std)
    return model.eval()


def save_tiny_checkpoint(path: Path, tokenizer: Any, *, seed: int = 0) -> Path:
    """``build_tiny_mtdnn(seed=seed)`` saved with ``tokenizer`` at ``path``."""
    build_tiny_mtdnn(seed=seed).save(path, tokenizer, {"note": "tiny random test model"})
    return path


@pytest.fixture(scope="session")
def tiny_mtdnn_task_defs() -> dict[str, TaskDef]:
    return tiny_task_defs()


@pytest.fixture(scope="session")
def make_tiny_mtdnn() -> TinyModelFactory:
    return build_tiny_mtdnn


@pytest.fixture(scope="session")
def tiny_mtdnn_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_mtdnn") / "checkpoint", tiny_tokenizer)


# --- a tiny training run: toy canonical data -> token-id cache, a tiny HF encoder folder ---------------------

TOY_POSITIVE = ("good", "great", "yes")
TOY_NEGATIVE = ("bad", "terrible", "no")
TOY_FILLER = ("the", "cat", "dog", "sat", "on", "mat", "movie", "film", "day", "night", "house", "car")


def _toy_rows(task: str, split: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Rows whose label is decided by one sentiment word hidden among filler words (learnable, not trivial)."""
    import random

    rng = random.Random(f"{task}-{split}-{seed}")
    rows: list[dict[str, Any]] = []
    for i in range(n):
        positive = rng.random() < 0.5
        word = rng.choice(TOY_POSITIVE if positive else TOY_NEGATIVE)
        filler = [rng.choice(TOY_FILLER) for _ in range(rng.randint(2, 9))]
        filler.insert(rng.randint(0, len(filler)), word)
        text = " ".join(filler)
        row: dict[str, Any] = {"uid": f"{task}-{split}-{i}", "premise": text}
        if task == "single":
            row["label"] = "positive" if positive else "negative"
        elif task == "pair":
            row["hypothesis"] = " ".join(rng.choice(TOY_FILLER) for _ in range(3))
            row["label"] = "entailment" if positive else "contradiction"
        elif task == "score":
            row["hypothesis"] = "a b"
            row["label"] = 1.0 if positive else -1.0
        else:  # rank: the right candidate repeats the sentiment word
            candidates = [rng.choice(TOY_FILLER), word, rng.choice(TOY_FILLER)]
            if rng.random() < 0.3:
                candidates = candidates[:2]  # variable candidate counts
            order = list(range(len(candidates)))
            rng.shuffle(order)
            row["hypothesis"] = [candidates[j] for j in order]
            row["label"] = order.index(1)
        rows.append(row)
    return rows


def make_tiny_run(
    root: Path,
    tokenizer_dir: Path,
    *,
    n_train: int = 96,
    n_dev: int = 16,
    labelled_test: bool = False,
    encoder_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write toy data for the four test tasks, preprocess it, and save a tiny HF encoder + tokenizer.

    Returns the keyword arguments of a ``TrainConfig`` (minus ``output_dir``) for a short CPU run.
    """
    import yaml
    from transformers import AutoTokenizer, BertModel

    from data_utils.prepro import preprocess
    from data_utils.task_def import load_task_defs

    data = root / "data"
    data.mkdir(parents=True)
    task_def_path = root / "tasks.yml"
    task_def_path.write_text(yaml.safe_dump(TASK_ENTRIES, sort_keys=False), encoding="utf-8")
    for task in TASK_ENTRIES:
        for split, n in (("train", n_train), ("dev", n_dev), ("test", n_dev)):
            rows = _toy_rows(task, split, n, seed=0)
            if split == "test" and not labelled_test:
                rows = [{k: v for k, v in row.items() if k != "label"} for row in rows]
            with (data / f"{task}_{split}.jsonl").open("w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
    preprocess(
        load_task_defs(task_def_path), data, tokenizer_dir, max_seq_len=64, cache_name="tiny", progress=False
    )

    encoder = root / "encoder"
    config = tiny_bert_config(**(encoder_overrides or {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(encoder)
    return {
        "task_def": str(task_def_path),
        "data_dir": str(data / "tiny"),
        "init_checkpoint": str(encoder),
        "train_datasets": list(TASK_ENTRIES),
        "epochs": 2,
        "batch_size": 8,
        "batch_size_eval": 16,
        "learning_rate": 1e-3,
        "log_every_steps": 5,
        "progress": False,
        "seed": 7,
    }


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> dict[str, Any]:
    """``make_tiny_run`` once per session (read-only: write outputs elsewhere)."""
    return make_tiny_run(tmp_path_factory.mktemp("tiny_run"), tiny_tokenizer_dir)
