"""experiments/glue/mrpc.py: GLUE's MRPC folder from the MSR Paraphrase Corpus files and the dev-id list."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_utils.errors import UserError
from experiments.glue.mrpc import build_mrpc

FIXTURES = Path(__file__).parent / "fixtures" / "glue"
HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"


@pytest.fixture
def mrpc(tmp_path: Path) -> Path:
    folder = tmp_path / "MRPC"
    folder.mkdir()
    for name in ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "mrpc_dev_ids.tsv"):
        shutil.copy(FIXTURES / name, folder / name)
    return folder


def test_dev_pairs_leave_train_and_test_gets_an_index(mrpc: Path) -> None:
    assert build_mrpc(mrpc) == {"train": 2, "dev": 1, "test": 2}
    dev = (mrpc / "dev.tsv").read_text(encoding="utf-8").splitlines()
    assert dev == [
        HEADER,
        "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain in 1998 .\t"
        "Yucaipa bought Dominick 's in 1995 and sold the chain in 1998 .",
    ]
    train = (mrpc / "train.tsv").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[1] for line in train[1:]] == ["702876", "1330381"]  # BOM and CR gone
    test = (mrpc / "test.tsv").read_text(encoding="utf-8").splitlines()
    assert test[0] == "index\t#1 ID\t#2 ID\t#1 String\t#2 String"
    assert test[2] == "1\t3019446\t3019327\tThe world 's two largest automakers said sales fell .\t" + (
        "Sales of the two largest automakers rose ."
    )


def test_a_dev_pair_missing_from_train_and_a_short_row(mrpc: Path) -> None:
    (mrpc / "mrpc_dev_ids.tsv").write_text("1\t2\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"mrpc_dev_ids.tsv: 1 dev pairs are not in the train file"):
        build_mrpc(mrpc)
    (mrpc / "msr_paraphrase_test.txt").write_text(f"{HEADER}\n1\t2\t3\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"msr_paraphrase_test.txt:2: 3 fields, the header has 5"):
        build_mrpc(mrpc)
