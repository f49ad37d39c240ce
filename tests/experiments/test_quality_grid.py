"""experiments/quality/run_grid.py: cells, resumability after a kill, paired subsamples, result rows, grid errors.

Most tests drive the grid with ``FakeTrain``, a stand-in for train.py that writes what train.py writes
(``results.json``, ``best/`` and ``last/`` checkpoint configs) with scores that are a known function of its
command line, and can die mid-run the way a killed grid does. One test runs the real train.py on a tiny random
encoder.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_utils.cache import load_split
from experiments.quality import run_grid
from experiments.quality.data import first_of_permutation, train_subsample
from experiments.quality.grid import Regime, check_train_flags, load_grid
from experiments.quality.paths import portable_path
from experiments.quality.results import FIELDS, read_results
from experiments.quality.runs import LOG_FILE
from tests.conftest import TINY_WORDS
from tests.mt_dnn.conftest import make_tiny_run

ROOT = Path(__file__).resolve().parents[2]
TASKS = {
    "alpha": {"task_type": "classification", "data_format": "premise_only", "labels": ["no", "yes"],
              "metrics": ["acc", "f1"]},
    "beta": {"task_type": "regression", "data_format": "premise_only", "metrics": ["pearson", "spearman"]},
}  # fmt: skip
TOTAL_STEPS = 10
KILLED_AT_STEP = 4


def _value(argv: Sequence[str], flag: str) -> str:
    return argv[list(argv).index(flag) + 1]


class FakeTrain:
    """train.py's outputs without training. Dev score = 50 + seed (+10 with --adv_train, +1 for beta), test =
    dev - 5; 10 steps, 12 s of training of which 1 s evaluation and 1 s checkpoints. ``die_at`` = the call
    that raises KeyboardInterrupt (the grid is killed) after writing ``last/`` at step 4 (or nothing at all
    when ``checkpoint_before_dying`` is False)."""

    def __init__(self, die_at: int | None = None, checkpoint_before_dying: bool = True) -> None:
        self.calls: list[list[str]] = []
        self.die_at = die_at
        self.checkpoint_before_dying = checkpoint_before_dying

    @staticmethod
    def _checkpoint(folder: Path, metadata: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mtdnn.json").write_text(json.dumps({"metadata": metadata}))

    def __call__(self, argv: Sequence[str], log_path: Path) -> int:
        self.calls.append(list(argv))
        out = Path(_value(argv, "--output_dir"))
        assert log_path.parent == out and out.is_dir()
        log_path.write_text("fake train.py\n")
        if len(self.calls) == self.die_at:
            (out / "partial.txt").write_text("half a run")
            if self.checkpoint_before_dying:
                self._checkpoint(out / "last", {"step": KILLED_AT_STEP})
                (out / "last" / "trainer_state.pt").write_bytes(b"state")
            raise KeyboardInterrupt
        if "--resume" in argv:  # train.py continues from last/
            assert json.loads((out / "last" / "mtdnn.json").read_text())["metadata"]["step"] == KILLED_AT_STEP
        seed = int(_value(argv, "--seed"))
        dev, test = {}, {}
        for task in _value(argv, "--train_datasets").split(","):
            score = 50.0 + seed + (10.0 if "--adv_train" in argv else 0.0) + (1.0 if task == "beta" else 0.0)
            first, second = TASKS[task]["metrics"]
            dev[f"{task}_dev"] = {first: score, second: score / 2}
            test[f"{task}_test"] = {first: score - 5, second: score / 4}
        self._checkpoint(out / "best", {"step": TOTAL_STEPS, "eval": dev})
        self._checkpoint(out / "last", {"step": TOTAL_STEPS, "eval": dev})
        (out / "last" / "trainer_state.pt").write_bytes(b"state")
        results = {"finished": True, "steps": TOTAL_STEPS, "epochs": 2, "best_step": TOTAL_STEPS,
                   "train_seconds": 12.0, "eval_seconds": 1.0, "checkpoint_seconds": 1.0,
                   "test_eval": test}  # fmt: skip
        (out / "results.json").write_text(json.dumps(results))
        return 0


def _rows(task: str, split: str, n: int) -> list[dict[str, Any]]:
    rng = random.Random(f"{task}{split}")
    return [
        {
            "uid": f"{task}-{split}-{i}",
            "label": rng.choice(["no", "yes"]) if task == "alpha" else rng.uniform(-1, 1),
            "premise": " ".join(rng.sample(TINY_WORDS, 4)),
        }
        for i in range(n)
    ]


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    """Canonical JSONL for alpha and beta (40 train, 6 dev, 8 test rows) and their task definitions."""
    data = tmp_path / "data"
    data.mkdir()
    for task in TASKS:
        for split, n in (("train", 40), ("dev", 6), ("test", 8)):
            rows = _rows(task, split, n)
            (data / f"{task}_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "tasks.yml").write_text(yaml.safe_dump(TASKS))
    return tmp_path


@pytest.fixture
def write_grid(suite: Path, tiny_tokenizer_dir: Path) -> Callable[..., Path]:
    def write(name: str = "grid.yml", **overrides: Any) -> Path:
        grid = {
            "data_dir": str(suite / "data"),
            "task_def": str(suite / "tasks.yml"),
            "model": str(tiny_tokenizer_dir),  # FakeTrain loads no encoder; the cache needs the tokenizer
            "tasks": ["alpha", "beta"],
            "n_train": [8, 16],
            "seeds": [1, 2],
            "methods": {"plain": [], "smart": ["--adv_train"]},
            "train_flags": ["--epochs", 2, "--batch_size", 4],
            **overrides,
        }
        path = suite / name
        path.write_text(yaml.safe_dump(grid, sort_keys=False))
        return path

    return write


def _run(grid: Path, out: Path, runner: Any, *extra: str) -> Any:
    return run_grid.main(["--grid", str(grid), "--output_dir", str(out), *extra], runner=runner)


# ---------------------------------------------------------------------------------------------- subsamples


def test_subsample_is_seeded_nested_and_in_file_order() -> None:
    rows = [{"uid": i} for i in range(100)]
    small, large = train_subsample(rows, 10, "alpha", 1), train_subsample(rows, 40, "alpha", 1)
    assert small == train_subsample(rows, 10, "alpha", 1)  # deterministic
    assert len(small) == 10 and len(large) == 40
    assert [row["uid"] for row in small] == sorted(row["uid"] for row in small)
    assert {row["uid"] for row in small} < {row["uid"] for row in large}  # sizes are nested
    assert small != train_subsample(rows, 10, "alpha", 2) and small != train_subsample(rows, 10, "beta", 1)
    assert first_of_permutation(7, 7, "k") == list(range(7))  # every row, once


def test_every_method_trains_on_the_same_rows_for_a_seed(
    write_grid: Callable[..., Path], tmp_path: Path
) -> None:
    fake = FakeTrain()
    _run(write_grid(regimes=["single"]), tmp_path / "out", fake)
    data_dirs: dict[tuple[str, str, str], set[str]] = {}
    for argv in fake.calls:
        key = (_value(argv, "--train_datasets"), *Path(_value(argv, "--output_dir")).name.split("-"))
        data_dirs.setdefault(key, set()).add(_value(argv, "--data_dir"))
    assert len(data_dirs) == 2 * 2 * 2 and all(len(dirs) == 1 for dirs in data_dirs.values())
    # the cached train split of (n=8, seed=2) holds exactly the seeded subsample, for plain and smart alike
    source = [json.loads(line) for line in (tmp_path / "data" / "alpha_train.jsonl").read_text().splitlines()]
    (cache,) = data_dirs[("alpha", "n8", "s2")]
    cached = load_split(Path(cache) / "alpha_train")
    assert list(cached.uids) == [row["uid"] for row in train_subsample(source, 8, "alpha", 2)]
    assert len(load_split(Path(cache) / "alpha_dev").uids) == 6  # dev and test are whole
    (larger,) = data_dirs[("alpha", "n16", "s2")]
    assert set(cached.uids) < set(load_split(Path(larger) / "alpha_train").uids)  # nested sizes


# ---------------------------------------------------------------------------------------------- rows


def test_rows_have_every_field_with_the_runs_values(write_grid: Callable[..., Path], tmp_path: Path) -> None:
    fake = FakeTrain()
    rows = _run(write_grid(), tmp_path / "out", fake)
    assert len(fake.calls) == 2 * 2 * 2 * 2 == len(rows)  # n x seed x task x method, one row each
    on_file = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert all(tuple(line) == FIELDS for line in on_file)
    row = next(r for r in rows if (r.method, r.task, r.n_train, r.seed) == ("smart", "beta", 16, 2))
    assert (row.regime, row.metric) == ("single", "pearson")
    assert (row.dev, row.test) == (63.0, 58.0)  # 50 + seed 2 + smart 10 + beta 1; test = dev - 5
    assert row.dev_metrics == {"pearson": 63.0, "spearman": 31.5}
    assert row.test_metrics == {"pearson": 58.0, "spearman": 15.75}
    assert (row.steps, row.timed_steps, row.train_step_seconds, row.seconds_per_step) == (10, 10, 10.0, 1.0)
    assert row.wall_seconds >= 0 and row.resumed is False
    assert row.flags == ["--epochs", "2", "--batch_size", "4", "--adv_train"]
    assert row.train_argv[-len(row.flags) :] == row.flags and _value(row.train_argv, "--seed") == "2"
    assert row.best_step == TOTAL_STEPS and row.epochs == 2 and row.not_converged is True
    assert (row.learning_rate, row.lr_source, row.copy_of) == (None, None, None)  # no --learning_rate flag
    out = Path(row.out_dir)  # relative to the current folder (written portably)
    assert (
        not out.is_absolute()
        and out.resolve() == tmp_path / "out" / "runs" / "single" / "smart" / "beta" / "n16-s2"
    )
    assert (out / LOG_FILE).is_file() and not (out / "last").exists() and not (out / "best").exists()


def test_finished_cells_are_skipped(write_grid: Callable[..., Path], tmp_path: Path, capsys: Any) -> None:
    grid = write_grid(seeds=[1])
    _run(grid, tmp_path / "out", FakeTrain())
    again = FakeTrain()
    rows = _run(grid, tmp_path / "out", again)
    assert again.calls == [] and len(rows) == 8
    more = FakeTrain()  # a grown grid runs only its new cells
    rows = _run(write_grid(seeds=[1, 3]), tmp_path / "out", more)
    assert len(more.calls) == 8 and {_value(argv, "--seed") for argv in more.calls} == {"3"}
    assert len(rows) == 16 and ": done" in capsys.readouterr().out


def test_methods_runs_a_subset_and_a_later_full_run_adds_the_rest(
    write_grid: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid, out = write_grid(seeds=[1], n_train=[8]), tmp_path / "out"
    first = FakeTrain()
    rows = _run(grid, out, first, "--methods", "plain")
    assert len(first.calls) == 2 and all("--adv_train" not in argv for argv in first.calls)
    assert {row.method for row in rows} == {"plain"} and len(rows) == 2
    rest = FakeTrain()
    rows = _run(grid, out, rest)
    assert len(rest.calls) == 2 and all("--adv_train" in argv for argv in rest.calls)
    assert len(rows) == 4
    with pytest.raises(SystemExit):
        _run(grid, out, FakeTrain(), "--methods", "plain,smrt")
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--methods: 'smrt' is not a method of" in err and "plain, smart" in err


def test_a_killed_grid_resumes_the_killed_run_and_redoes_nothing(
    write_grid: Callable[..., Path], tmp_path: Path
) -> None:
    grid, out = write_grid(), tmp_path / "out"
    killer = FakeTrain(die_at=3)
    with pytest.raises(KeyboardInterrupt):
        _run(grid, out, killer)
    assert len(read_results(out / "results.jsonl")) == 2
    with (out / "results.jsonl").open("a") as handle:  # killed in the middle of appending a row, too
        handle.write('{"regime": "single", "meth')
    resumer = FakeTrain()
    rows = _run(grid, out, resumer)
    assert len(resumer.calls) == 16 - 2
    first = resumer.calls[0]
    assert "--resume" in first and _value(first, "--output_dir") == _value(killer.calls[-1], "--output_dir")
    assert all("--resume" not in argv for argv in resumer.calls[1:])
    assert len(rows) == 16 and len({row.key for row in rows}) == 16
    resumed = [row for row in rows if row.resumed]
    assert len(resumed) == 1 and resumed[0].out_dir == portable_path(_value(first, "--output_dir"))
    assert (resumed[0].steps, resumed[0].timed_steps) == (TOTAL_STEPS, TOTAL_STEPS - KILLED_AT_STEP)
    assert (out / "results.jsonl").read_text().count("\n") == 16  # the torn line is gone


def test_a_run_killed_before_its_first_checkpoint_starts_over(
    write_grid: Callable[..., Path], tmp_path: Path
) -> None:
    grid, out = write_grid(seeds=[1], n_train=[8]), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _run(grid, out, FakeTrain(die_at=1, checkpoint_before_dying=False))
    killed = out / "runs" / "single" / "plain" / "alpha" / "n8-s1"
    assert (killed / "partial.txt").is_file()
    again = FakeTrain()
    rows = _run(grid, out, again)
    assert "--resume" not in again.calls[0] and not (killed / "partial.txt").exists()
    assert len(rows) == 4 and not any(row.resumed for row in rows)


def test_rows_made_with_other_flags_are_refused(
    write_grid: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(write_grid(seeds=[1], n_train=[8]), tmp_path / "out", FakeTrain())
    changed = write_grid(
        seeds=[1], n_train=[8], methods={"plain": [], "smart": ["--adv_train", "--adv_k", 2]}
    )
    with pytest.raises(SystemExit):
        _run(changed, tmp_path / "out", FakeTrain())
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "single smart alpha n=8 seed=1 was run with flags" in err


# ---------------------------------------------------------------------------------------------- regimes


def test_multi_task_then_fine_tuning_from_its_best_checkpoint(
    write_grid: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    fake = FakeTrain()
    rows = _run(write_grid(seeds=[1], n_train=[8], regimes=["single", "mtl+finetune"]), out, fake)
    called = [
        (_value(argv, "--train_datasets"), Path(_value(argv, "--output_dir")).parts[-4])
        for argv in fake.calls
    ]
    assert called == [
        ("alpha", "single"), ("alpha", "single"), ("beta", "single"), ("beta", "single"),  # plain, smart
        ("alpha,beta", "mtl"), ("alpha,beta", "mtl"),
        ("alpha", "mtl_finetune"), ("alpha", "mtl_finetune"), ("beta", "mtl_finetune"), ("beta", "mtl_finetune"),
    ]  # fmt: skip
    mtl_best = out / "runs" / "mtl" / "smart" / "alpha+beta" / "n8-s1" / "best"
    finetune = next(argv for argv in fake.calls if "mtl_finetune" in argv[argv.index("--output_dir") + 1]
                    and "--adv_train" in argv)  # fmt: skip
    assert _value(finetune, "--init_checkpoint") == str(mtl_best.resolve()) and mtl_best.is_dir()
    regimes = {(row.regime, row.method) for row in rows}
    assert {regime for regime, _ in regimes} == {"single", "mtl", "mtl+finetune"} and len(rows) == 12
    mtl_rows = [row for row in rows if row.regime == Regime.MTL and row.method == "plain"]
    assert [(row.task, row.dev) for row in mtl_rows] == [("alpha", 51.0), ("beta", 52.0)]


def test_reuse_takes_another_grids_rows_of_the_same_single_task_runs(
    write_grid: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first"
    _run(write_grid(seeds=[1], n_train=[8]), first, FakeTrain())
    fake = FakeTrain()
    grid = write_grid("mtl.yml", seeds=[1], n_train=[8], regimes=["single", "mtl+finetune"])
    rows = _run(grid, tmp_path / "second", fake, "--reuse", str(first / "results.jsonl"))
    regimes = [Path(_value(argv, "--output_dir")).parts[-4] for argv in fake.calls]
    assert regimes == ["mtl", "mtl", "mtl_finetune", "mtl_finetune", "mtl_finetune", "mtl_finetune"]
    theirs = {row.key: row for row in read_results(first / "results.jsonl")}
    single = [row for row in rows if row.regime == Regime.SINGLE]
    assert len(single) == 4 and all(row == theirs[row.key] for row in single)
    assert capsys.readouterr().out.count(f"reused from {first / 'results.jsonl'}") == 4


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"n_dev": 3}, "differs from"),  # other dev rows
        ({"train_flags": ["--epochs", 3, "--batch_size", 4]}, "other train.py flags"),
    ],
)
def test_reuse_refuses_rows_of_other_data_or_flags(
    write_grid: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    reason: str,
) -> None:
    first = tmp_path / "first"
    _run(write_grid(seeds=[1], n_train=[8]), first, FakeTrain())
    capsys.readouterr()
    fake = FakeTrain()
    changed = write_grid("changed.yml", seeds=[1], n_train=[8], **overrides)
    _run(changed, tmp_path / "second", fake, "--reuse", str(first / "results.jsonl"))
    printed = capsys.readouterr().out
    assert len(fake.calls) == 4 and printed.count("not reusing") == 4 and reason in printed
    assert "reused from" not in printed


# ---------------------------------------------------------------------------------------------- bad grids


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 3}, "key 'epochs': unknown"),
        ({"methods": None}, "key 'methods': expected a mapping"),
        ({"n_train": [8, "many"]}, "key 'n_train': expected integers, got 'many'"),
        ({"n_train": [0]}, "key 'n_train': expected positive integers, got 0"),
        ({"seeds": [1, 1]}, "key 'seeds': repeated entries"),
        ({"tasks": ["alpha", "gamma"]}, "key 'tasks': 'gamma' is not defined in"),
        ({"regimes": ["multi"]}, "key 'regimes': unknown regime 'multi'"),
        ({"regimes": ["mtl"], "tasks": ["alpha"]}, "key 'regimes': multi-task training needs at least two tasks"),
        ({"methods": {"plain": ["--seed", 3]}}, "key 'methods.plain': --seed is set by the harness"),
        ({"methods": {"plain": [{"a": 1}]}}, "key 'methods.plain[0]': expected a flag or a value"),
        ({"methods": {"a/b": []}}, "key 'methods.a/b': a method name is"),
        ({"flags_by_n_train": {32: ["--epochs", 4]}}, "key 'flags_by_n_train.32': not one of n_train [8, 16]"),
        ({"methods": {"fgm": ["--adv_methd", "fgm"]}}, "key 'methods.fgm': train.py: unrecognized arguments: --adv_methd fgm"),
        ({"train_flags": ["--epochs", "two"]}, "key 'train_flags': train.py: argument --epochs: invalid int value: 'two'"),
        ({"methods": {"weird": ["--warmup", 2]}}, "key 'methods.weird': train.py: --warmup must be in [0, 1)"),
        ({"n_train": [41]}, "key 'n_train': 41 rows asked"),
    ],
)  # fmt: skip
def test_grid_mistakes_are_one_line_errors(
    write_grid: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    message: str,
) -> None:
    grid = write_grid(**overrides)
    with pytest.raises(SystemExit) as exit_info:
        _run(grid, tmp_path / "out", FakeTrain())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {grid}: ") and message in err[0], err


def test_invalid_yaml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.yml"
    grid.write_text("tasks: [a\nseeds: 1\n")
    with pytest.raises(SystemExit):
        _run(grid, tmp_path / "out", FakeTrain())
    assert capsys.readouterr().err.strip().startswith(f"error: {grid}:")


def test_dry_run_lists_cells_and_runs_nothing(
    write_grid: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeTrain()
    assert _run(write_grid(n_train=[8], seeds=[1]), tmp_path / "out", fake, "--dry_run") == []
    printed = capsys.readouterr().out.splitlines()
    assert (
        fake.calls == [] and printed[0] == "[1/4] single plain alpha n=8 seed=1: to run" and len(printed) == 4
    )


@pytest.mark.parametrize("name", ["grid.yml", "grid_mtl.yml"])
def test_shipped_grids_load(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    grid = load_grid(ROOT / "experiments" / "quality" / name)
    assert {"plain", "smart"} <= set(grid.methods) and len(grid.seeds) >= 3 and len(grid.tasks) >= 2
    assert grid.methods["plain"] == () and "--adv_train" in grid.methods["smart"]


def test_robustness_grid_trains_every_method_and_keeps_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    from module.adversarial import AdversarialMethodName

    monkeypatch.chdir(ROOT)
    grid = load_grid(ROOT / "experiments" / "quality" / "grid_robustness.yml")
    check_train_flags(grid)
    assert grid.keep_checkpoints and grid.methods["plain"] == ()
    others = {name for name in AdversarialMethodName} - {AdversarialMethodName.SMART}
    assert {flags[-1] for flags in grid.methods.values() if "--adv_method" in flags} == others
    assert "--adv_train" in grid.methods["smart"]


# ---------------------------------------------------------------------------------------------- real train.py


def test_one_cell_through_the_real_train_py(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    """A 1x1x1x1 grid on a tiny random encoder, train.py in a subprocess: the row is what train.py wrote."""
    tiny = make_tiny_run(tmp_path / "tiny", tiny_tokenizer_dir, n_train=48, n_dev=8, labelled_test=True)
    grid = tmp_path / "grid.yml"
    grid.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(Path(tiny["task_def"]).parent / "data"),
                "task_def": tiny["task_def"],
                "model": tiny["init_checkpoint"],
                "tasks": ["single"],
                "n_train": [24],
                "seeds": [3],
                "methods": {"smart": ["--adv_train"]},
                "train_flags": ["--epochs", 1, "--batch_size", 8, "--learning_rate", "1e-3"],
                "keep_checkpoints": True,
            }
        )
    )
    (row,) = run_grid.main(["--grid", str(grid), "--output_dir", str(tmp_path / "out")])
    out = Path(row.out_dir)
    results = json.loads((out / "results.json").read_text())
    best = json.loads((out / "best" / "mtdnn.json").read_text())["metadata"]
    assert (
        results["finished"]
        and results["config"]["adversarial"]["method"] == "smart"
        and results["config"]["seed"] == 3
    )
    assert row.steps == results["steps"] == 3 == row.timed_steps  # 24 rows / batch 8, one epoch
    assert row.metric == "acc" and row.dev == best["eval"]["single_dev"]["acc"]
    assert row.test == results["test_eval"]["single_test"]["acc"] and row.test_metrics.keys() == {"acc"}
    step_seconds = results["train_seconds"] - results["eval_seconds"] - results["checkpoint_seconds"]
    assert row.train_step_seconds == pytest.approx(step_seconds, abs=1e-3)
    assert row.wall_seconds > results["train_seconds"]  # process start-up and model loading on top
    assert len(load_split(Path(_value(row.train_argv, "--data_dir")) / "single_train").uids) == 24
