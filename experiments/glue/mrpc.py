"""Build GLUE's MRPC folder (train.tsv, dev.tsv, test.tsv) from the MSR Paraphrase Corpus files.

GLUE distributes MRPC as the corpus's own ``msr_paraphrase_train.txt`` / ``msr_paraphrase_test.txt`` plus a
list of the (``#1 ID``, ``#2 ID``) pairs of the train file that form GLUE's dev split (``mrpc_dev_ids.tsv``).
This writes the folder ``experiments/glue/prepare.py`` reads: train.tsv and dev.tsv keep the corpus's header
(``Quality``, ``#1 ID``, ``#2 ID``, ``#1 String``, ``#2 String``); test.tsv puts an ``index`` in place of the
quality column.
"""

from __future__ import annotations

from pathlib import Path

from data_utils.atomic import atomic_write_text
from data_utils.errors import UserError
from experiments.canonical import read_utf8

COLUMNS = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")


def _rows(path: Path) -> list[list[str]]:
    """The data rows of a corpus file (tab-separated, no quoting; the header is checked and dropped)."""
    if not path.is_file():
        raise UserError(f"{path}: not found")
    lines = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
    if not lines or tuple(lines[0].split("\t")) != COLUMNS:
        raise UserError(f"{path}:1: expected the header {' | '.join(COLUMNS)}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(COLUMNS):
            raise UserError(f"{path}:{number}: {len(fields)} fields, the header has {len(COLUMNS)}")
        rows.append(fields)
    return rows


def _dev_ids(path: Path) -> set[tuple[str, str]]:
    if not path.is_file():
        raise UserError(f"{path}: not found")
    ids = set()
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        fields = line.strip().split("\t")
        if line.strip() and len(fields) != 2:
            raise UserError(f"{path}:{number}: {len(fields)} fields, expected 2 (#1 ID, #2 ID)")
        if line.strip():
            ids.add((fields[0], fields[1]))
    return ids


def build_mrpc(folder: Path) -> dict[str, int]:
    """Write ``folder``/{train,dev,test}.tsv from the three downloaded files there; returns row counts."""
    train_rows = _rows(folder / "msr_paraphrase_train.txt")
    test_rows = _rows(folder / "msr_paraphrase_test.txt")
    dev_ids = _dev_ids(folder / "mrpc_dev_ids.tsv")
    header = "\t".join(COLUMNS) + "\n"
    dev = [row for row in train_rows if (row[1], row[2]) in dev_ids]
    train = [row for row in train_rows if (row[1], row[2]) not in dev_ids]
    if len(dev) != len(dev_ids):
        raise UserError(
            f"{folder / 'mrpc_dev_ids.tsv'}: {len(dev_ids) - len(dev)} dev pairs are not in the train file"
        )
    atomic_write_text(folder / "train.tsv", header + "".join("\t".join(row) + "\n" for row in train))
    atomic_write_text(folder / "dev.tsv", header + "".join("\t".join(row) + "\n" for row in dev))
    test_header = "\t".join(("index", *COLUMNS[1:])) + "\n"
    test_lines = "".join("\t".join((str(i), *row[1:])) + "\n" for i, row in enumerate(test_rows))
    atomic_write_text(folder / "test.tsv", test_header + test_lines)
    return {"train": len(train), "dev": len(dev), "test": len(test_rows)}
