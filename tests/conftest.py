"""Shared test fixtures: a tiny offline WordPiece tokenizer and tiny task-definition files.

Tokenizer (session-scoped, built from ``TINY_VOCAB``; no download):

- ``tiny_tokenizer_dir``: a folder written by ``save_pretrained``; ``AutoTokenizer.from_pretrained(dir)``
  loads it as a fast BERT tokenizer (uncased, ``model_max_length`` 512 as for BERT).
- ``tiny_tokenizer``: that tokenizer. Ids: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4,
  then ``TINY_WORDS`` in order (``a`` is 5, ``b`` 6, ``c`` 7, ...), then the ``##`` pieces. Use
  ``tiny_tokenizer.convert_tokens_to_ids`` rather than hard-coding beyond the specials.

Task definitions (function-scoped; each returns the YAML's path; the task's name is in brackets):

- ``premise_only_task_def`` [single]: classification, premise_only, labels negative/positive.
- ``pair_task_def`` [pair]: classification, premise_and_one_hypothesis, labels entailment/neutral/
  contradiction.
- ``regression_task_def`` [score]: regression, premise_and_one_hypothesis.
- ``ranking_task_def`` [rank]: ranking, premise_and_multi_hypothesis.
- ``all_task_defs``: one file with all four tasks.
- ``write_task_def``: ``write_task_def({name: entry, ...}, filename="tasks.yml") -> Path`` for anything else.
- ``write_jsonl``: ``write_jsonl(path, rows) -> Path`` writes one JSON object per line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import mt_dnn.tasks  # noqa: F401 - registers the task kinds data_utils parses task definitions with

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tests use tiny models: one intra-op thread is fastest, and it keeps a busy 2-core machine from thrashing.
torch.set_num_threads(1)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORDS_TEXT = """a b c d e the cat dog sat on mat is was not no yes good bad movie film great terrible
    man woman he she it they we you i and or but if then because so very quite really rather new old big
    small red blue green play plays played run runs running walk walked house car tree river sun moon star
    day night time year who what where when why how can will would should must one two three four five
    question answer true false this that there here of to in for with at by from up down"""
TINY_WORDS: tuple[str, ...] = tuple(_WORDS_TEXT.split())
TINY_PIECES = ("##s", "##ed", "##ing", "##ly", "##er")
TINY_VOCAB: tuple[str, ...] = SPECIAL_TOKENS + TINY_WORDS + TINY_PIECES

TASK_ENTRIES: dict[str, dict[str, Any]] = {
    "single": {
        "task_type": "classification",
        "data_format": "premise_only",
        "labels": ["negative", "positive"],
    },
    "pair": {
        "task_type": "classification",
        "data_format": "premise_and_one_hypothesis",
        "labels": ["entailment", "neutral", "contradiction"],
    },
    "score": {"task_type": "regression", "data_format": "premise_and_one_hypothesis"},
    "rank": {"task_type": "ranking", "data_format": "premise_and_multi_hypothesis"},
}


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertTokenizerFast

    assert len(set(TINY_VOCAB)) == len(TINY_VOCAB)
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(
        vocab={token: i for i, token in enumerate(TINY_VOCAB)}, model_max_length=512
    )
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir), use_fast=True)
    assert tokenizer.is_fast and len(tokenizer) == len(TINY_VOCAB)
    return tokenizer


@pytest.fixture
def write_task_def(tmp_path: Path) -> Callable[..., Path]:
    def write(entries: Mapping[str, Mapping[str, Any]], filename: str = "tasks.yml") -> Path:
        path = tmp_path / filename
        path.write_text(
            yaml.safe_dump({name: dict(entry) for name, entry in entries.items()}, sort_keys=False),
            encoding="utf-8",
        )
        return path

    return write


@pytest.fixture
def premise_only_task_def(write_task_def: Callable[..., Path]) -> Path:
    return write_task_def({"single": TASK_ENTRIES["single"]}, "single.yml")


@pytest.fixture
def pair_task_def(write_task_def: Callable[..., Path]) -> Path:
    return write_task_def({"pair": TASK_ENTRIES["pair"]}, "pair.yml")


@pytest.fixture
def regression_task_def(write_task_def: Callable[..., Path]) -> Path:
    return write_task_def({"score": TASK_ENTRIES["score"]}, "score.yml")


@pytest.fixture
def ranking_task_def(write_task_def: Callable[..., Path]) -> Path:
    return write_task_def({"rank": TASK_ENTRIES["rank"]}, "rank.yml")


@pytest.fixture
def all_task_defs(write_task_def: Callable[..., Path]) -> Path:
    return write_task_def(TASK_ENTRIES, "all_tasks.yml")


@pytest.fixture
def write_jsonl() -> Callable[[Path, Iterable[Mapping[str, Any]]], Path]:
    def write(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(dict(row)) + "\n" for row in rows), encoding="utf-8")
        return path

    return write
