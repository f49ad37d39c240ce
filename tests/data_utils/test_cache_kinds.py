"""Caches and task kinds: a cache written before kinds existed still loads, the built-in kinds still write
the same bytes, and a kind's named arrays round-trip through ``meta.json``'s ``arrays``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_utils.cache import EncodedSplit, load_split, split_dir, verify_cache, write_split
from data_utils.dataset import Collator, TaskDataset
from data_utils.errors import UserError
from data_utils.prepro import preprocess
from mt_dnn.tasks import load_task_defs

# Written by main's prepro_std.py before the kinds redesign (one task of each built-in type, a labelled
# train/dev and an unlabelled test split each; the tiny tokenizer of conftest.py, max_seq_len 12).
OLD = Path(__file__).parent / "fixtures" / "old_cache"
# Facts of meta.json that name where the files were when the fixture was built.
_PLACES = ("source",)


def _without_places(meta: dict[str, Any]) -> dict[str, Any]:
    meta = {key: value for key, value in meta.items() if key not in _PLACES}
    meta["tokenizer"] = {k: v for k, v in meta["tokenizer"].items() if k != "name_or_path"}
    return meta


def test_the_old_cache_loads_and_verifies() -> None:
    task_defs = load_task_defs(OLD / "tasks.yml")
    verify_cache(OLD / "data" / "tiny", task_defs)
    for name, task_def in task_defs.items():
        for split in task_def.split_names:
            loaded = load_split(split_dir(OLD / "data" / "tiny", name, split))
            assert loaded.extras == {}
            rows = [TaskDataset(task_def, loaded)[i] for i in range(len(loaded))]
            batch = Collator(task_defs, pad_token_id=0)(rows)
            assert batch.extra == {}
            assert (batch.labels is None) == (split == "test" or task_def.kind.self_labelled)


def test_the_built_in_kinds_write_the_same_bytes(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(OLD / "data", data, ignore=shutil.ignore_patterns("tiny"))
    preprocess(
        load_task_defs(OLD / "tasks.yml"),
        data,
        tiny_tokenizer_dir,
        max_seq_len=12,
        cache_name="tiny",
        progress=False,
    )
    old_files = sorted(
        p.relative_to(OLD / "data" / "tiny") for p in (OLD / "data" / "tiny").rglob("*") if p.is_file()
    )
    new_files = sorted(p.relative_to(data / "tiny") for p in (data / "tiny").rglob("*") if p.is_file())
    assert new_files == old_files
    for relative in old_files:
        old, new = OLD / "data" / "tiny" / relative, data / "tiny" / relative
        if relative.suffix == ".npy":
            assert new.read_bytes() == old.read_bytes(), relative
        elif relative.name == "meta.json":
            assert _without_places(json.loads(new.read_text())) == _without_places(
                json.loads(old.read_text())
            )
            assert "arrays" not in json.loads(new.read_text())


def _split(extras: dict[str, np.ndarray]) -> EncodedSplit:
    return EncodedSplit(
        input_ids=np.array([2, 5, 3, 2, 6, 7, 3], dtype=np.int32),
        seq_offsets=np.array([0, 3, 7]),
        row_offsets=np.array([0, 1, 2]),
        labels=np.array([1, 2]),
        uids=np.array(["a", "b"]),
        meta={"task": "t", "has_labels": True},
        extras=extras,
    )


def test_named_arrays_round_trip(tmp_path: Path) -> None:
    token_labels = np.array([-100, 0, -100, -100, 1, 2, -100], dtype=np.int64)
    write_split(tmp_path / "t_train", _split({"token_labels": token_labels}))
    meta = json.loads((tmp_path / "t_train" / "meta.json").read_text())
    assert meta["arrays"] == ["token_labels"]
    loaded = load_split(tmp_path / "t_train")
    assert set(loaded.extras) == {"token_labels"}
    np.testing.assert_array_equal(loaded.extras["token_labels"], token_labels)


@pytest.mark.parametrize("name", ["labels", "meta", "../x", "Token"])
def test_an_array_name_must_be_plain_and_free(name: str) -> None:
    with pytest.raises(ValueError, match="reserved or not a plain name"):
        _split({name: np.zeros(7, dtype=np.int64)})


def test_a_listed_array_that_is_missing_is_a_damaged_cache(tmp_path: Path) -> None:
    write_split(tmp_path / "t_train", _split({"token_labels": np.zeros(7, dtype=np.int64)}))
    (tmp_path / "t_train" / "token_labels.npy").unlink()
    with pytest.raises(UserError, match="damaged token-id cache"):
        load_split(tmp_path / "t_train")
