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

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from data_utils.task_def import TaskDef, parse_task_def
from mt_dnn.model import ModelOptions, MTDNNModel
from tests.conftest import TASK_ENTRIES, TINY_VOCAB

TinyModelFactory = Callable[..., MTDNNModel]


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
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=weight_std,
    )
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
