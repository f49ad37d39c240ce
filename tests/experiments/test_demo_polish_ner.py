"""experiments/demo/polish_ner.py: BIG-bench's IO-tagged sentences -> BIO CoNLL files the demo task reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_utils.conll import read_conll
from data_utils.errors import UserError
from experiments.demo.fetch import BIGBENCH_EXTRACT_DIR, SourceCache
from experiments.demo.polish_ner import SOURCE_TASK, io_to_bio, main, prepare
from mt_dnn.tasks import load_task_defs

DEMO_TASK_DEF = Path(__file__).resolve().parents[2] / "experiments" / "demo" / "demo_task_def.yml"


def test_io_runs_become_bio_spans() -> None:
    tags = ["O", "nam_loc", "nam_loc", "action", "O", "action", "action", "nam_loc"]
    assert io_to_bio(tags) == [
        "O",
        "B-nam_loc",
        "I-nam_loc",
        "B-action",
        "O",
        "B-action",
        "I-action",
        "B-nam_loc",
    ]


def _cache(tmp_path: Path, examples: list[dict[str, str]]) -> SourceCache:
    folder = tmp_path / "cache" / BIGBENCH_EXTRACT_DIR
    folder.mkdir(parents=True)
    (folder / f"{SOURCE_TASK}.json").write_text(json.dumps({"examples": examples}), encoding="utf-8")
    return SourceCache(tmp_path / "cache")


def test_conversion_writes_conll_the_demo_task_reads(tmp_path: Path) -> None:
    examples = [
        {"input": f"Jan Kowalski poszedł do Warszawy {i}", "target": "nam_liv nam_liv action O nam_loc O"}
        for i in range(30)
    ] + [{"input": "", "target": ""}]
    counts = prepare(_cache(tmp_path, examples), tmp_path / "out", seed=0, max_train=5)
    assert counts == {"train": 5, "dev": 3, "test": 3, "empty": 1}
    task_def = load_task_defs(DEMO_TASK_DEF)["polish_ner"]
    train = read_conll(tmp_path / "out" / "polish_ner_train.conll", task_def)
    assert len(train.examples) == 5
    names = task_def.labels or ()
    first = train.examples[0]
    assert first.words[:5] == ("Jan", "Kowalski", "poszedł", "do", "Warszawy")
    assert [names[i] for i in first.label or ()] == [
        "B-nam_liv",
        "I-nam_liv",
        "B-action",
        "O",
        "B-nam_loc",
        "O",
    ]
    uids = {s.words[-1] for split in ("train", "dev", "test")
            for s in read_conll(tmp_path / "out" / f"polish_ner_{split}.conll", task_def).examples}  # fmt: skip
    assert len(uids) == 11  # no sentence in two splits


def test_a_tag_count_mismatch_names_the_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache(tmp_path, [{"input": "a b", "target": "O"}])
    with pytest.raises(UserError, match=r"examples\[0\]: 2 tokens but 1 tags"):
        prepare(cache, tmp_path / "out")
    with pytest.raises(SystemExit):
        main(["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")])
    assert capsys.readouterr().err.startswith("error: ")
