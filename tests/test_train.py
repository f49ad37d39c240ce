from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import train
from mt_dnn.config import OptimizerName, SamplingStrategyName, SchedulerName
from mt_dnn.flags import parse_config
from tests.mt_dnn.conftest import make_tiny_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_args(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> dict[str, Any]:
    return make_tiny_run(tmp_path_factory.mktemp("cli_run"), tiny_tokenizer_dir, n_train=32)


def flags(run: dict[str, Any], out: Path, *extra: str) -> list[str]:
    return [
        "--task_def", run["task_def"],
        "--data_dir", run["data_dir"],
        "--init_checkpoint", run["init_checkpoint"],
        "--train_datasets", ",".join(run["train_datasets"]),
        "--output_dir", str(out),
        "--epochs", "1",
        "--batch_size", "8",
        "--no-progress",
        *extra,
    ]  # fmt: skip


def test_train_cli_end_to_end(
    run_args: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = train.main(flags(run_args, tmp_path, "--test_datasets", "single,score", "--local_rank", "0"))
    assert results["finished"]
    assert set(results["final_eval"]) == {"single_dev", "score_dev"}
    printed = json.loads(capsys.readouterr().out)
    assert printed["final_eval"] == results["final_eval"]
    assert (tmp_path / "train.log").is_file() and (tmp_path / "results.json").is_file()


def test_config_file_then_flags_override_it(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yml"
    config_file.write_text(
        "task_def: t.yml\ndata_dir: d\ninit_checkpoint: m\ntrain_datasets: [a, b]\n"
        "learning_rate: 3e-5\nepochs: 2\noptimizer: adamax\nscheduler_type: cosine\nwarmup: 0\n"
    )
    config = parse_config(["--config", str(config_file), "--epochs", "5"])
    assert config.train_datasets == ["a", "b"]
    assert config.learning_rate == 3e-5 and config.epochs == 5 and config.warmup == 0.0
    assert config.optimizer is OptimizerName.ADAMAX and config.scheduler_type is SchedulerName.COSINE


def test_mtdnn_mix_opt_flags_select_the_mix_opt_sampler() -> None:
    base = ["--task_def", "t", "--data_dir", "d", "--init_checkpoint", "m", "--train_datasets", "a,b"]
    assert parse_config(base).sampling.strategy is SamplingStrategyName.PROPORTIONAL
    config = parse_config([*base, "--mix_opt", "1", "--ratio", "0.5"])
    assert config.sampling.strategy is SamplingStrategyName.MIX_OPT and config.sampling.ratio == 0.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data_dir", "d", "--init_checkpoint", "m", "--train_datasets", "a"], "--task_def is required"),
        (["--task_def", "t", "--data_dir", "d", "--init_checkpoint", "m"], "--train_datasets is required"),
        (
            [
                "--task_def",
                "t",
                "--data_dir",
                "d",
                "--init_checkpoint",
                "m",
                "--train_datasets",
                "a",
                "--warmup",
                "1.5",
            ],
            "--warmup must be in [0, 1)",
        ),
        (
            [
                "--task_def",
                "t",
                "--data_dir",
                "d",
                "--init_checkpoint",
                "m",
                "--train_datasets",
                "a",
                "--epochs",
                "0",
            ],
            "--epochs must be > 0",
        ),
    ],
)
def test_flag_mistakes_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}" + err[0].split(message, 1)[1]]


def test_unknown_config_key_names_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "run.yml"
    config_file.write_text("learning_rat: 1e-4\n")
    with pytest.raises(SystemExit):
        train.main(["--config", str(config_file)])
    assert (
        capsys.readouterr().err.strip()
        == f"error: {config_file}: key 'learning_rat': unknown training option (did you mean 'learning_rate'?)"
    )


def test_wrong_type_in_config_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "run.yml"
    config_file.write_text("epochs: three\n")
    with pytest.raises(SystemExit):
        train.main(["--config", str(config_file)])
    assert "key 'epochs': expected int" in capsys.readouterr().err


def test_unknown_task_exits_2_without_traceback(run_args: dict[str, Any], tmp_path: Path) -> None:
    argv = flags({**run_args, "train_datasets": ["nope"]}, tmp_path)
    result = subprocess.run(
        [sys.executable, "train.py", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "task 'nope' is not defined" in result.stderr
