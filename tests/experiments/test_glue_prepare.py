"""experiments/glue/prepare.py on hand-written files in the official GLUE formats (headers, columns, no quoting)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_utils.errors import UserError
from data_utils.readers import read_examples
from data_utils.task_def import load_task_defs
from experiments.glue import prepare

MNLI_TRAIN_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2"
)
MNLI_ROW = "0\t31193\t31193n\tgovernment\t( ( Conceptually cream ) )\t( Product )\t(ROOT (S))\t(ROOT (S))\t"
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"

FILES = {
    # CoLA's train/dev: no header; source, label, original mark, sentence.
    "CoLA/train.tsv": "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
    "gj04\t0\t*\tThey drank the pub.\n",
    "CoLA/dev.tsv": "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n",
    "CoLA/test.tsv": "index\tsentence\n0\tBill whistled past the house.\n",
    "SST-2/train.tsv": "sentence\tlabel\nhide new secretions from the parental units \t0\n"
    'the " greatest " film , "ever"\t1\n',
    "SST-2/dev.tsv": "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n",
    "SST-2/test.tsv": "index\tsentence\n0\tuneasy mishmash of styles and genres .\n",
    "MRPC/train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    '1\t702876\t702977\tAmrozi called him " the witness " .\tReferring to him as only " the witness " .\n',
    "MRPC/dev.tsv": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tHe said no.\tShe said yes.\n",
    "MRPC/test.tsv": "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1089874\t1089925\tPCCW 's chief .\tThe chief .\n",
    "STS-B/train.tsv": f"{STSB_HEADER}\tscore\n0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\t"
    "A plane is taking off.\tAn air plane is taking off.\t5.000\n",
    "STS-B/dev.tsv": f"{STSB_HEADER}\tscore\n0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\t"
    "A man with a hard hat is dancing.\tA man wearing a hard hat is dancing.\t5.000\n",
    "STS-B/test.tsv": f"{STSB_HEADER}\n0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\t"
    "A girl is brushing her hair.\n",
    # QQP's train holds rows broken by a newline inside a question: they have too few fields.
    "QQP/train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of preparation is enough?\t0\n"
    "201841\t303951\t174364\tHow can I create an Android app?\n"
    "Is it hard?\t0\n",
    "QQP/dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    "40066\t15326\t15327\tWhat is the best way to learn?\tHow do I learn best?\t1\n",
    "QQP/test.tsv": "id\tquestion1\tquestion2\n0\tHow does the Surface Pro compare with iPad Pro?\tWhy a core m3?\n",
    "MNLI/train.tsv": f"{MNLI_TRAIN_HEADER}\tlabel1\tgold_label\n"
    f"{MNLI_ROW}Conceptually cream skimming has two basic dimensions.\tProduct and geography matter.\tneutral\tneutral\n",
    "MNLI/dev_matched.tsv": f"{MNLI_TRAIN_HEADER}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
    f"{MNLI_ROW}The new rights are nice enough\tEveryone really likes the newest benefits\t"
    "neutral\tentailment\tneutral\tneutral\tneutral\tneutral\n",
    "MNLI/dev_mismatched.tsv": f"{MNLI_TRAIN_HEADER}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
    f"{MNLI_ROW}Your contribution helped.\tYour contribution did not help.\t"
    "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n",
    "MNLI/test_matched.tsv": f"{MNLI_TRAIN_HEADER}\n{MNLI_ROW}Hierbas is a spicy liqueur.\tHierbas is sweet.\n",
    "MNLI/test_mismatched.tsv": f"{MNLI_TRAIN_HEADER}\n{MNLI_ROW}What have you decided?\tWhat will you do?\n",
    "QNLI/train.tsv": "index\tquestion\tsentence\tlabel\n0\tWhen did the third Digimon series begin?\t"
    "Unlike the two seasons before it, it takes place in the real world.\tnot_entailment\n",
    "QNLI/dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWhat came into force after the Treaty?\tThe Treaty.\tentailment\n",
    "QNLI/test.tsv": "index\tquestion\tsentence\n0\tWhat organization is devoted to Jihad?\tHamas.\n",
    "RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction Found in Iraq Yet.\t"
    "Weapons of Mass Destruction Found in Iraq.\tnot_entailment\n",
    "RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve died.\tChristopher Reeve had an accident.\tnot_entailment\n",
    "RTE/test.tsv": "index\tsentence1\tsentence2\n0\tMexico City has a population.\tMexico City is big.\n",
    "WNLI/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n",
    "WNLI/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged with hair.\tThe hair has to be cleaned.\t0\n",
    "WNLI/test.tsv": "index\tsentence1\tsentence2\n0\tMaude and Dora had seen the trains.\tThe trains were seen.\n",
    "diagnostic/diagnostic.tsv": "index\tsentence1\tsentence2\n0\tThe cat sat on the mat.\tThe cat did not sit on the mat.\n",
}


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    root = tmp_path / "glue_data"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_task_and_split_in_the_official_layout(glue_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = prepare.main(["--glue_dir", str(glue_dir), "--output_dir", str(out)])
    assert set(summary) == set(prepare.TASKS)
    assert summary["mnli"] == {
        "train": 1, "matched_dev": 1, "mismatched_dev": 1, "matched_test": 1, "mismatched_test": 1, "skipped": []
    }  # fmt: skip
    # CoLA: headerless train/dev by position, uid from the line number; test by header.
    cola = rows_of(out / "cola_train.jsonl")
    assert cola[1] == {"uid": "cola-train-2", "premise": "They drank the pub.", "label": "0"}
    assert rows_of(out / "cola_test.jsonl") == [
        {"uid": "cola-test-0", "premise": "Bill whistled past the house."}
    ]
    # No quoting: quotes are text.
    assert rows_of(out / "sst_train.jsonl")[1]["premise"] == 'the " greatest " film , "ever"'
    assert rows_of(out / "mrpc_train.jsonl")[0]["hypothesis"] == 'Referring to him as only " the witness " .'
    assert rows_of(out / "stsb_train.jsonl")[0]["label"] == 5.0
    assert "label" not in rows_of(out / "stsb_test.jsonl")[0]
    mnli_dev = rows_of(out / "mnli_mismatched_dev.jsonl")[0]
    assert mnli_dev["label"] == "contradiction" and mnli_dev["premise"] == "Your contribution helped."
    assert rows_of(out / "ax_test.jsonl")[0]["hypothesis"] == "The cat did not sit on the mat."


def test_qqp_malformed_rows_are_skipped_counted_and_located(
    glue_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = prepare.main(["--glue_dir", str(glue_dir), "--output_dir", str(tmp_path), "--tasks", "qqp"])
    assert summary["qqp"]["train"] == 1
    assert len(summary["qqp"]["skipped"]) == 2
    assert summary["qqp"]["skipped"][0].endswith("QQP/train.tsv:3: 4 fields, the header has 6")
    assert "malformed rows skipped: 2" in capsys.readouterr().out


def test_written_files_read_back_with_the_glue_task_definitions(glue_dir: Path, tmp_path: Path) -> None:
    prepare.prepare(glue_dir, tmp_path, list(prepare.TASKS))
    task_defs = load_task_defs(prepare.TASK_DEF)
    assert set(task_defs) == set(prepare.TASKS)
    for name, task in prepare.TASKS.items():
        for source in task.files:
            result = read_examples(tmp_path / f"{name}_{source.split}.jsonl", task_defs[name])
            assert len(result.examples) >= 1 and not result.skipped


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        (
            "RTE/dev.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\tonly two\tfields\n",
            r"RTE/dev.tsv:2: 3 fields",
        ),
        (
            "RTE/dev.tsv",
            "index\tpremise\thypothesis\tlabel\n",
            r"RTE/dev.tsv:1: header has no column 'sentence1'",
        ),
        (
            "STS-B/dev.tsv",
            f"{STSB_HEADER}\tscore\n0\ta\tb\tc\td\te\tf\tA.\tB.\tfive\n",
            r"'five' is not a number",
        ),
        ("CoLA/train.tsv", "gj04\t1\n", r"CoLA/train.tsv:1: 2 fields, expected at least 4"),
    ],
)
def test_a_malformed_file_names_file_line_and_column(
    glue_dir: Path, tmp_path: Path, file: str, text: str, message: str
) -> None:
    (glue_dir / file).write_text(text, encoding="utf-8")
    task = {"RTE": "rte", "STS-B": "stsb", "CoLA": "cola"}[file.split("/")[0]]
    with pytest.raises(UserError, match=message):
        prepare.prepare(glue_dir, tmp_path / "out", [task])


def test_a_missing_file_and_an_unknown_task(glue_dir: Path, tmp_path: Path) -> None:
    (glue_dir / "WNLI" / "test.tsv").unlink()
    with pytest.raises(UserError, match=r"WNLI/test.tsv: not found \(task wnli"):
        prepare.prepare(glue_dir, tmp_path, ["wnli"])
    with pytest.raises(SystemExit):
        prepare.main(["--glue_dir", str(glue_dir), "--output_dir", str(tmp_path), "--tasks", "cola,glue"])


def test_submission_files_have_the_official_names_headers_rows_and_labels(
    glue_dir: Path, tmp_path: Path, tiny_tokenizer: object
) -> None:
    from transformers import BertModel

    from experiments.glue import submission
    from mt_dnn.model import MTDNNModel
    from tests.mt_dnn.conftest import tiny_bert_config

    data = tmp_path / "data"
    prepare.prepare(glue_dir, data, list(prepare.TASKS))
    task_defs = load_task_defs(prepare.TASK_DEF)
    heads = {name: task for name, task in task_defs.items() if name != "ax"}
    checkpoint = tmp_path / "checkpoint"
    MTDNNModel(BertModel(tiny_bert_config()), heads).save(checkpoint, tiny_tokenizer)

    written = submission.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--data_dir",
            str(data),
            "--output_dir",
            str(tmp_path / "sub"),
            "--device",
            "cpu",
        ]
    )
    names = {path.name for path in written}
    assert names == {
        "CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv",
        "RTE.tsv", "WNLI.tsv", "AX.tsv",
    }  # fmt: skip
    allowed = {
        "CoLA": {"0", "1"}, "SST-2": {"0", "1"}, "MRPC": {"0", "1"}, "QQP": {"0", "1"}, "WNLI": {"0", "1"},
        "MNLI-m": {"entailment", "neutral", "contradiction"}, "MNLI-mm": {"entailment", "neutral", "contradiction"},
        "AX": {"entailment", "neutral", "contradiction"}, "QNLI": {"entailment", "not_entailment"},
        "RTE": {"entailment", "not_entailment"},
    }  # fmt: skip
    sources = {name: (task, split) for name, _, task, split in submission.SUBMISSION_FILES}
    for path in written:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0] == "index\tprediction"
        task, split = sources[path.stem]
        assert len(lines) - 1 == len(rows_of(data / f"{task}_{split}.jsonl"))
        indices, predictions = zip(*(line.split("\t") for line in lines[1:]), strict=True)
        assert list(indices) == [str(i) for i in range(len(indices))]
        if path.stem == "STS-B":
            assert all(float(value) == float(value) for value in predictions)
        else:
            assert set(predictions) <= allowed[path.stem]


def test_a_file_in_another_encoding_names_file_and_line(glue_dir: Path, tmp_path: Path) -> None:
    rte = glue_dir / "RTE" / "dev.tsv"
    text = (
        "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tCaf\u00e9 au lait.\tC.\tentailment\n"
    )
    rte.write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError) as caught:
        prepare.prepare(glue_dir, tmp_path / "out", ["rte"])
    assert str(caught.value) == f"{rte}:3: not UTF-8 text (byte 0xe9 at column 6); convert the file to UTF-8"
    assert not (tmp_path / "out" / "rte_dev.jsonl").exists()


def test_mrpc_s_byte_order_mark_is_not_text(glue_dir: Path, tmp_path: Path) -> None:
    prepare.prepare(glue_dir, tmp_path / "out", ["mrpc"])
    assert rows_of(tmp_path / "out" / "mrpc_train.jsonl")[0]["label"] == "1"
