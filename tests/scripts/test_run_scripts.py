"""scripts/run_{glue,snli,scitail,anli}.sh end to end on fixture-sized data with a tiny random BERT encoder.

Each script runs for real (tokenise, train with SMART, fine-tune, report, submission) with one short epoch;
the dry runs check the commands the papers' settings produce, and bad arguments stop before anything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from experiments.anli import prepare as anli_prepare
from experiments.glue import prepare as glue_prepare
from experiments.scitail import prepare as scitail_prepare
from experiments.snli import prepare as snli_prepare
from tests.experiments.test_glue_prepare import FILES as GLUE_FILES
from tests.mt_dnn.conftest import save_tiny_checkpoint, tiny_bert_config

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "experiments" / "fixtures"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, tiny_tokenizer: object) -> dict:
    """A tiny encoder folder, an MT-DNN checkpoint of the same vocabulary, and every benchmark's data."""
    from transformers import AutoTokenizer, BertModel

    root = tmp_path_factory.mktemp("bench")
    encoder = root / "tiny-bert"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(tiny_bert_config()).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)).save_pretrained(encoder)
    checkpoint = save_tiny_checkpoint(root / "mtdnn", tiny_tokenizer)
    glue_dir = root / "glue_data"
    for name, text in GLUE_FILES.items():
        (glue_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (glue_dir / name).write_text(text, encoding="utf-8")
    glue_prepare.prepare(glue_dir, root / "data" / "glue", list(glue_prepare.TASKS))
    snli_prepare.prepare(FIXTURES / "snli" / "snli_1.0", root / "data" / "snli")
    scitail_prepare.prepare(FIXTURES / "scitail" / "SciTailV1.1", root / "data" / "scitail")
    anli_prepare.prepare(FIXTURES / "anli" / "anli_v1.0", root / "data" / "anli")
    return {"root": root, "encoder": encoder, "checkpoint": checkpoint, "data": root / "data"}


def standard(bench: dict, out: Path) -> list[str]:
    """ENCODER OUT_DIR and the train.py flags every real run gets."""
    return [str(bench["encoder"]), str(out), "--no-progress", "--device", "cpu"]


def run_script(
    name: str, bench: dict, args: list[str], env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DATA_DIR": str(bench["data"] / name.removeprefix("run_").removesuffix(".sh")),
        "EPOCHS": "1",
        "BATCH_SIZE": "2",
        "MAX_SEQ_LEN": "64",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    command = ["bash", str(REPO / "scripts" / name), *args]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text(encoding="utf-8"))


def commands(stdout: str, program: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(f"+ {program}")]


def test_glue_multi_task_then_fine_tuning_then_submission(bench: dict, tmp_path: Path) -> None:
    out = tmp_path / "glue"
    result = run_script(
        "run_glue.sh", bench, standard(bench, out), env={"MTL_TASKS": "rte,mnli", "FINETUNE_TASKS": "rte"}
    )
    trains = commands(result.stdout, "python train.py")
    assert len(trains) == 2
    for line in trains:  # the MT-DNN paper's settings, with SMART
        assert "--optimizer adamax --learning_rate 5e-5 --batch_size 2 --epochs 1 --warmup 0.1" in line
        assert "--grad_clipping 1" in line and "--adv_train" in line
    assert "--train_datasets rte,mnli" in trains[0] and f"--init_checkpoint {bench['encoder']}" in trains[0]
    assert "--train_datasets rte" in trains[1] and f"--init_checkpoint {out}/mtl/best" in trains[1]
    assert set(results(out / "mtl")["final_eval"]) == {"rte_dev", "mnli_matched_dev", "mnli_mismatched_dev"}
    assert set(results(out / "rte")["final_eval"]) == {"rte_dev"}
    report = (out / "dev_report.md").read_text(encoding="utf-8")
    assert "| mtl | dev | mnli_mismatched_dev | acc " in report and "| rte | dev | rte_dev | acc " in report
    # RTE from its fine-tuned checkpoint, MNLI and AX from the multi-task one; the rest have no head.
    assert f"RTE.tsv: rte head of {out}/rte/best" in result.stdout
    assert f"AX.tsv: mnli head of {out}/mtl/best" in result.stdout
    assert sorted(path.name for path in (out / "submission").glob("*.tsv")) == [
        "AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "RTE.tsv"
    ]  # fmt: skip
    rte = (out / "submission" / "RTE.tsv").read_text(encoding="utf-8").splitlines()
    assert rte[0] == "index\tprediction" and rte[1].split("\t")[1] in {"entailment", "not_entailment"}


def test_glue_dry_run_prints_every_stage_and_runs_nothing(bench: dict, tmp_path: Path) -> None:
    out = tmp_path / "glue"
    result = run_script(
        "run_glue.sh", bench, ["--dry_run", *standard(bench, out)], env={"NPROC": "2", "MAX_TRAIN_ROWS": "1"}
    )
    trains = commands(result.stdout, "torchrun --nproc_per_node=2 train.py")
    assert len(trains) == 10  # the multi-task run, then nine fine-tuning runs
    assert "--train_datasets cola,sst,mrpc,stsb,qqp,mnli,qnli,rte " in trains[0]
    assert [line.split("--train_datasets ")[1].split()[0] for line in trains[1:]] == list(glue_prepare.TASKS)[
        :9
    ]
    assert len(commands(result.stdout, "python experiments/subsample.py")) == 1
    assert "--max_rows 1" in result.stdout and "--max_seq_len 64" in result.stdout
    assert len(commands(result.stdout, "python experiments/glue/submission.py")) == 1
    assert sorted(path.name for path in out.iterdir()) == []


def test_snli_fine_tuning_scores_dev_and_test(bench: dict, tmp_path: Path) -> None:
    out = tmp_path / "snli"
    result = run_script("run_snli.sh", bench, standard(bench, out), env={"ADV": "0"})
    assert "--adv_train" not in result.stdout
    run = results(out / "p100")
    assert set(run["final_eval"]) == {"snli_dev"} and set(run["test_eval"]) == {"snli_test"}
    assert run["config"]["optimizer"] == "adamax" and run["config"]["learning_rate"] == 5e-5
    report = (out / "report.md").read_text(encoding="utf-8").splitlines()
    assert report[2].startswith("| p100 | dev | snli_dev | acc ") and report[3].startswith(
        "| p100 | test | snli_test |"
    )


def test_scitail_domain_adaptation_from_a_checkpoint(bench: dict, tmp_path: Path) -> None:
    out = tmp_path / "scitail"
    args = ["--init", str(bench["checkpoint"]), *standard(bench, out)]
    result = run_script("run_scitail.sh", bench, args, env={"PERCENTS": "10"})
    # 10% of 3 rows rounds to 0: at least one row is kept (seeded), dev and test are copied whole.
    data = out / "p10" / "data"
    assert "--seed 2018 --fraction 0.1\n" in result.stdout
    assert len((data / "scitail_train.jsonl").read_text().splitlines()) == 1
    assert len((data / "scitail_test.jsonl").read_text().splitlines()) == 2
    run = results(out / "p10")
    assert run["config"]["init_checkpoint"] == str(bench["checkpoint"])
    assert run["config"]["data_dir"] == str(data / "tiny-bert")
    assert set(run["final_eval"]) == {"scitail_dev"} and set(run["test_eval"]) == {"scitail_test"}
    assert [line.split(" | ")[:3] for line in (out / "report.md").read_text().splitlines()[2:]] == [
        ["| p10", "dev", "scitail_dev"], ["| p10", "test", "scitail_test"]
    ]  # fmt: skip


def test_a_full_share_trains_on_the_data_folder_itself(bench: dict, tmp_path: Path) -> None:
    result = run_script("run_scitail.sh", bench, ["--dry_run", *standard(bench, tmp_path)])
    samples = commands(result.stdout, "python experiments/subsample.py")
    assert [line.split("--fraction ")[1] for line in samples] == ["0.001", "0.01", "0.1"]  # none for 100%
    prepros = commands(result.stdout, "python prepro_std.py")
    assert len(prepros) == 4 and f"--root_dir {bench['data']}/scitail " in prepros[3]
    assert [
        line.split("--output_dir ")[1].split()[0] for line in commands(result.stdout, "python train.py")
    ] == [f"{tmp_path}/p{percent}" for percent in ("0.1", "1", "10", "100")]


def test_anli_all_rounds_with_every_round_reported(bench: dict, tmp_path: Path) -> None:
    out = tmp_path / "anli"
    result = run_script("run_anli.sh", bench, standard(bench, out))
    assert "--best_metric anli:acc" in result.stdout
    run = results(out / "anli")
    assert set(run["final_eval"]) == {"anli_dev", "anli_dev_r1", "anli_dev_r2", "anli_dev_r3"}
    assert set(run["test_eval"]) == {"anli_test", "anli_test_r1", "anli_test_r2", "anli_test_r3"}
    assert run["best_metric"] == "anli_dev:acc"


@pytest.mark.parametrize(
    ("script", "args", "env", "message"),
    [
        ("run_glue.sh", [], {}, "usage: "),
        ("run_snli.sh", ["no/such/encoder", "OUT"], {}, "encoder folder 'no/such/encoder' not found"),
        ("run_scitail.sh", ["ENCODER", "OUT"], {"NPROC": "0"}, "NPROC=0 is not a positive integer"),
        ("run_scitail.sh", ["ENCODER", "OUT"], {"PERCENTS": "0.1 200"}, "PERCENTS: 200 is not in (0, 100]"),
        ("run_anli.sh", ["ENCODER", "OUT"], {"TASKS": "anli_r4"}, "unknown ANLI task 'anli_r4'"),
        ("run_anli.sh", ["ENCODER", "OUT"], {"LR": "fast"}, "LR=fast is not a number"),
        ("run_snli.sh", ["--init", "nowhere", "ENCODER", "OUT"], {}, "--init 'nowhere' is neither"),
        (
            "run_glue.sh",
            ["ENCODER", "OUT"],
            {"DATA_DIR": "no/such/data"},
            "DATA_DIR 'no/such/data' not found",
        ),
        ("run_glue.sh", ["ENCODER", "OUT"], {"MTL_TASKS": "rte,xnli"}, "xnli_train.jsonl not found"),
        # train.py's own parser checks the flags before any preprocessing.
        (
            "run_snli.sh",
            ["ENCODER", "OUT", "--learnin_rate", "1e-3"],
            {},
            "unrecognized arguments: --learnin_rate",
        ),
        ("run_snli.sh", ["ENCODER", "OUT", "--grad_clipping", "nan"], {}, "--grad_clipping must be a finite"),
    ],
)
def test_a_bad_argument_stops_before_anything_runs(
    bench: dict, tmp_path: Path, script: str, args: list[str], env: dict[str, str], message: str
) -> None:
    args = [{"ENCODER": str(bench["encoder"]), "OUT": str(tmp_path / "out")}.get(arg, arg) for arg in args]
    result = run_script(script, bench, ["--dry_run", *args], env=env, check=False)
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""
    assert not any((tmp_path / "out").glob("*"))
