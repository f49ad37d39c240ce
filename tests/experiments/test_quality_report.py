"""experiments/quality/report.py on a hand-made results file: medians, ranges, paired bootstrap intervals, step-time
ratios and the regime comparison (hand-computed), the PNGs, and the one-line errors."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest

from data_utils.errors import UserError
from experiments.quality import report
from experiments.quality.results import OPTIONAL, ResultRow, read_results
from experiments.quality.stats import bootstrap_interval, paired_difference, spread

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_row(
    regime: str, method: str, task: str, n_train: int, seed: int, test: float | None, dev: float,
    seconds_per_step: float = 1.0,
) -> ResultRow:  # fmt: skip
    metric = "acc" if task == "alpha" else "pearson"
    return ResultRow(
        regime=regime, method=method, task=task, n_train=n_train, seed=seed, metric=metric, dev=dev, test=test,
        dev_metrics={metric: dev}, test_metrics={} if test is None else {metric: test}, steps=10, timed_steps=10,
        train_step_seconds=10 * seconds_per_step, wall_seconds=20.0, resumed=False,
        out_dir=f"out/{regime}/{method}/{task}/n{n_train}-s{seed}", flags=[], train_argv=[],
    )  # fmt: skip


# (regime, method, task, n_train) -> per seed: (test, dev, seconds per step)
CELLS: dict[tuple[str, str, str, int], dict[int, tuple[float | None, float, float]]] = {
    ("single", "plain", "alpha", 100): {1: (50, 55, 1.0), 2: (52, 56, 1.0), 3: (60, 57, 1.0)},
    ("single", "smart", "alpha", 100): {1: (51, 60, 2.8), 2: (54, 61, 3.0), 3: (66, 65, 3.6)},
    ("single", "fgm", "alpha", 100): {1: (50, 58, 2.0), 2: (56, 59, 2.0)},  # seed 3 not run yet
    ("single", "plain", "alpha", 200): {1: (1, 1, 1.0), 2: (2, 2, 1.0), 3: (3, 3, 1.0), 4: (10, 4, 1.0)},
    ("single", "plain", "beta", 100): {1: (70, 70, 1.0), 2: (None, 71, 1.0)},  # seed 2's test is unlabelled
    ("single", "smart", "beta", 100): {1: (72, 73, 3.0), 2: (74, 74, 3.0)},
    ("mtl", "plain", "alpha", 100): {1: (48, 50, 2.0), 2: (50, 51, 2.0), 3: (58, 52, 2.0)},
    ("mtl+finetune", "plain", "alpha", 100): {1: (53, 56, 1.0), 2: (55, 57, 1.0), 3: (61, 58, 1.0)},
}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "results.jsonl"
    rows = [
        make_row(regime, method, task, n, seed, test, dev, sps)
        for (regime, method, task, n), seeds in CELLS.items()
        for seed, (test, dev, sps) in seeds.items()
    ]
    path.write_text("".join(row.to_json() + "\n" for row in rows))
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) > 1000
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# ---------------------------------------------------------------------------------------------- statistics


def test_spread_is_median_and_range() -> None:
    assert spread([60, 50, 52]) == spread([50, 52, 60])
    assert (spread([50, 52, 60]).median, spread([50, 52, 60]).low, spread([50, 52, 60]).high) == (52, 50, 60)
    assert spread([1, 2, 3, 10]).median == 2.5 and spread([1, 2, 3, 10]).count == 4


def test_bootstrap_interval_on_hand_computable_cases() -> None:
    # 3 differences: each extreme mean (all draws the same value) has probability 1/27 = 3.7% > 2.5%
    assert bootstrap_interval([1, 2, 6]) == (1.0, 6.0)
    # 2 differences: resampled means 0, 2, 4 with probabilities 1/4, 1/2, 1/4
    assert bootstrap_interval([0, 4]) == (0.0, 4.0)
    assert bootstrap_interval([2, 2, 2]) == (2.0, 2.0)
    # {3, 3, 1}: the mean 1 has probability 1/27 (lower end 1), the mean 3 has (2/3)^3 = 30% (upper end 3)
    assert bootstrap_interval([3, 3, 1]) == (1.0, 3.0)
    # many seeds: close to the normal interval of the mean, mean +- 1.96 sd / sqrt(n)
    values = [float(v) for v in range(40)]  # mean 19.5, population sd 11.54 -> half-width 3.58
    low, high = bootstrap_interval(values)
    assert low == pytest.approx(19.5 - 3.58, abs=0.3) and high == pytest.approx(19.5 + 3.58, abs=0.3)
    assert bootstrap_interval(values) == (low, high)  # seeded: the same every time
    assert bootstrap_interval(values, seed=1) != (low, high)


def test_paired_difference_counts_strict_wins() -> None:
    difference = paired_difference([51, 54, 66], [50, 52, 60])
    assert (difference.mean, difference.low, difference.high) == (3.0, 1.0, 6.0)
    assert (difference.wins, difference.count) == (3, 3)
    assert paired_difference([50, 56], [50, 52]).wins == 1  # a tie is not a win


# ---------------------------------------------------------------------------------------------- the report


def test_report_table_values(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    text = report.main(["--results", str(results), "--output_dir", str(out)])
    lines = text.splitlines()
    single = lines.index("## Regime: single")
    assert lines[single + 2].startswith("| task | metric | n_train | method | seeds | test median |")
    assert lines[single + 4 : single + 11] == [
        "| alpha | acc | 100 | plain | 3 | 52.0 | 50.0–60.0 | 56.0 | - | - | - |",
        # differences 1, 2, 6; step times 2.8, 3.0, 3.6 over 1.0
        "| alpha | acc | 100 | smart | 3 | 54.0 | 51.0–66.0 | 61.0 | +3.0 [+1.0, +6.0] | 3/3 | 3.00 |",
        # paired on seeds 1 and 2 only: differences 0 and 4
        "| alpha | acc | 100 | fgm | 2 | 53.0 | 50.0–56.0 | 58.5 | +2.0 [+0.0, +4.0] | 1/2 | 2.00 |",
        "| alpha | acc | 200 | plain | 4 | 2.5 | 1.0–10.0 | 2.5 | - | - | - |",
        "| beta | pearson | 100 | plain | 1 | 70.0 | 70.0–70.0 | 70.5 | - | - | - |",
        # seed 2 of plain has no test score: one pair (72 - 70); the step-time ratio pairs both seeds
        "| beta | pearson | 100 | smart | 2 | 73.0 | 72.0–74.0 | 73.5 | +2.0 [+2.0, +2.0] | 1/1 | 3.00 |",
        "",
    ]
    comparison = lines.index("## Multi-task vs single-task")
    assert lines[comparison + 2 :] == [
        "| task | metric | n_train | method | single | mtl | mtl+finetune | Δ mtl vs single [95% CI] | "
        "Δ mtl+finetune vs single [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
        # mtl - single: -2, -2, -2; mtl+finetune - single: 3, 3, 1
        "| alpha | acc | 100 | plain | 52.0 | 50.0 | 55.0 | -2.0 [-2.0, -2.0] | +2.3 [+1.0, +3.0] |",
        "",
        "## Robustness",
        "",
        "No robustness curves: run report.py with --robustness FILE (the benchmark's JSON).",
    ]
    assert "No cost-vs-gain plot for mtl: no method has paired runs with plain." in lines
    assert lines[2].startswith("22 runs: tasks alpha, beta; training rows 100, 200; seeds 1, 2, 3, 4;")
    assert (out / "report.md").read_text() == text and capsys.readouterr().out == text


def test_report_on_the_dev_split(results: Path, tmp_path: Path) -> None:
    text = report.main(["--results", str(results), "--output_dir", str(tmp_path / "r"), "--split", "dev"])
    # smart's dev scores 60, 61, 65 against plain's 55, 56, 57: differences 5, 5, 8
    assert (
        "| alpha | acc | 100 | smart | 3 | 61.0 | 60.0–65.0 | 61.0 | +6.0 [+5.0, +8.0] | 3/3 | 3.00 |" in text
    )


def test_report_writes_the_plots(results: Path, tmp_path: Path) -> None:
    curves = tmp_path / "robustness.json"
    curves.write_text(json.dumps({"task": "alpha", "metric": "acc", "radii": [0, 0.01, 0.1],
                                  "methods": {"plain": [80, 60, 20], "smart": [81, 70, 35]}}))  # fmt: skip
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.png").write_bytes(b"from an earlier report")
    text = report.main(["--results", str(results), "--output_dir", str(out), "--robustness", str(curves)])
    pngs = {path.name: png_size(path) for path in out.glob("*.png")}
    assert pngs == {
        "quality_vs_n_single.png": (1080, 432),  # one 4.5 x 3.6 inch panel per task (2), 120 dpi
        "quality_vs_n_mtl.png": (540, 432),  # mtl rows: one task
        "quality_vs_n_mtl_finetune.png": (540, 432),
        "cost_vs_gain_single.png": (720, 504),
        "robustness.png": (720, 504),
    }  # the stale PNG went with the old folder
    for name in pngs:
        assert f"]({name})" in text


def test_torn_last_line_is_ignored_and_bad_lines_are_located(results: Path, tmp_path: Path) -> None:
    rows = read_results(results)
    with results.open("a") as handle:
        handle.write('{"regime": "single", "me')
    assert read_results(results) == rows
    lines = results.read_text().splitlines()
    lines[3] = json.dumps({**json.loads(lines[3]), "seed": "three"})
    results.write_text("\n".join(lines) + "\n")
    with pytest.raises(Exception, match=rf"^{results}:4: key 'seed': unexpected value 'three'$"):
        read_results(results)


def test_a_last_line_that_is_no_row_is_an_error_and_stays(tmp_path: Path) -> None:
    garbage = tmp_path / "results.jsonl"
    garbage.write_bytes(b"not a results file")
    with pytest.raises(UserError, match=rf"^{garbage}:1: not a JSON object"):
        read_results(garbage, repair=True)
    assert garbage.read_bytes() == b"not a results file"


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        ("duplicate", [], "repeats the row of line 1"),
        ("none", ["--baseline", "vanilla"], "--baseline vanilla: no rows of that method"),
        ("robustness", [], "key 'methods.smart': 2 values for 3 radii"),
        ("foreign", [], "holds results.jsonl, which is not part of a report"),
    ],
)
def test_report_mistakes_are_one_line_errors(
    results: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setup: str,
    argv: list[str],
    message: str,
) -> None:
    out = tmp_path / "report"
    extra: list[str] = []
    if setup == "duplicate":
        first = results.read_text().splitlines()[0]
        results.write_text(results.read_text() + first + "\n")
    elif setup == "robustness":
        curves = tmp_path / "robustness.json"
        curves.write_text(json.dumps({"task": "alpha", "metric": "acc", "radii": [0, 1, 2],
                                      "methods": {"plain": [3, 2, 1], "smart": [3, 2]}}))  # fmt: skip
        extra = ["--robustness", str(curves)]
    elif setup == "foreign":
        out = tmp_path
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--results", str(results), "--output_dir", str(out), *argv, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert setup == "foreign" or not out.exists()
    assert (tmp_path / "results.jsonl").is_file()  # never replaced by a report


# ---------------------------------------------------------------------------------------------- study grids


def _study_row(
    method: str, seed: int, test: float, dev: float, steps: int, seconds_per_step: float, best_step: int | None,
    **fields: object,
) -> ResultRow:  # fmt: skip
    row = make_row("single", method, "alpha", 100, seed, test, dev, seconds_per_step)
    return dataclasses.replace(
        row, steps=steps, timed_steps=steps, train_step_seconds=steps * seconds_per_step, best_step=best_step,
        **fields,
    )  # fmt: skip


STUDY_ROWS = [
    # tuning runs at seed 1: plain wins at 2e-4; smart ties, so the smaller rate wins
    _study_row("plain@lr=1e-04", 1, 48, 55, 10, 1.0, 10, learning_rate=1e-4),
    _study_row("plain@lr=2e-04", 1, 50, 57, 10, 1.0, 10, learning_rate=2e-4),
    _study_row("smart@lr=1e-04", 1, 54, 60, 20, 3.0, 20, learning_rate=1e-4),
    _study_row("smart@lr=2e-04", 1, 40, 60, 20, 3.0, 20, learning_rate=2e-4),
    # (method, seed, test, dev, steps, seconds per step, best step): with early stopping the steps differ
    _study_row("plain", 1, 50, 57, 10, 1.0, 10, learning_rate=2e-4, lr_source="tuned", copy_of="plain@lr=2e-04"),
    _study_row("plain", 2, 52, 56, 10, 1.0, 6, learning_rate=2e-4, lr_source="tuned"),
    _study_row("smart", 1, 54, 60, 20, 3.0, 20, learning_rate=1e-4, lr_source="tuned", copy_of="smart@lr=1e-04"),
    _study_row("smart", 2, 58, 62, 5, 2.0, 5, learning_rate=1e-4, lr_source="tuned"),
    _study_row("fgm", 1, 51, 58, 10, 2.0, 4, learning_rate=1e-4, lr_source="smart"),
    _study_row("fgm", 2, 53, 59, 10, 2.0, 10, learning_rate=1e-4, lr_source="smart"),
]  # fmt: skip


def test_report_of_a_tuning_grid(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text("".join(row.to_json() + "\n" for row in STUDY_ROWS))
    text = report.main(["--results", str(results), "--output_dir", str(tmp_path / "report")])
    lines = text.splitlines()
    assert (
        lines[2]
        == "6 runs: tasks alpha; training rows 100; seeds 1, 2; methods plain, smart, fgm; regimes single."
    )
    single = lines.index("## Regime: single")
    assert lines[single + 2].endswith(
        "| seeds better | step time × plain | not converged | train time × plain |"
    )
    assert lines[single + 4 : single + 8] == [
        "| alpha | acc | 100 | plain | 2 | 51.0 | 50.0–52.0 | 56.5 | - | - | - | 1/2 | - |",
        # test differences 4, 6; step times 3/1, 2/1; training times 3*20 / 10 = 6 and 2*5 / 10 = 1
        "| alpha | acc | 100 | smart | 2 | 56.0 | 54.0–58.0 | 61.0 | +5.0 [+4.0, +6.0] | 2/2 | 2.50 | 2/2 | 3.50 |",
        # seed 1's best step (4) is before its last (10)
        "| alpha | acc | 100 | fgm | 2 | 52.0 | 51.0–53.0 | 58.5 | +1.0 [+1.0, +1.0] | 2/2 | 2.00 | 1/2 | 2.00 |",
        "",
    ]
    selection = lines.index("## Learning-rate selection (dev)")
    assert lines[selection + 2 : selection + 6] == [
        "| task | metric | n_train | method | seed | dev @ 1e-04 | dev @ 2e-04 | chosen | reused by |",
        "|---|---|---|---|---|---|---|---|---|",
        "| alpha | acc | 100 | plain | 1 | 55.0 | 57.0 | 2e-04 | - |",
        "| alpha | acc | 100 | smart | 1 | 60.0 | 60.0 | 1e-04 | fgm |",
    ]
    assert "@lr=" not in "\n".join(lines[:selection])  # tuning runs only in the selection table
    assert any(line.startswith("Learning rates were chosen on dev (4 tuning runs") for line in lines)
    assert (tmp_path / "report" / "cost_vs_gain_single.png").is_file()


def test_rows_without_the_newer_fields_still_read(results: Path) -> None:
    lines = results.read_text().splitlines()
    assert "best_step" in json.loads(lines[0])  # make_row writes them (as null)...
    old = [json.dumps({k: v for k, v in json.loads(line).items() if k not in OPTIONAL}) for line in lines]
    results.write_text("\n".join(old) + "\n")  # ...a results file of an older version does not
    rows = read_results(results)
    assert len(rows) == 22 and all(row.best_step is None and row.learning_rate is None for row in rows)


def test_a_grid_with_only_tuning_rows_reports_its_selection_table(tmp_path: Path) -> None:
    from experiments.quality.results import read_results

    source = tmp_path / "rows.jsonl"
    lines = []
    for lr, dev in (("1e-04", 51.3), ("4e-04", 72.6)):
        row = {
            "regime": "single", "method": f"plain@lr={lr}", "task": "banking77", "n_train": 500, "seed": 1,
            "metric": "acc", "dev": dev, "test": dev - 2, "dev_metrics": {"acc": dev},
            "test_metrics": {"acc": dev - 2}, "steps": 256, "timed_steps": 256, "train_step_seconds": 100.0,
            "wall_seconds": 120.0, "resumed": False, "out_dir": "out/x", "flags": [], "train_argv": [],
            "learning_rate": float(lr), "lr_source": None, "copy_of": None, "best_step": 256, "epochs": 16,
        }  # fmt: skip
        lines.append(json.dumps(row))
    source.write_text("\n".join(lines) + "\n")
    assert len(read_results(source)) == 2
    text = report.main(["--results", str(source), "--output_dir", str(tmp_path / "report")])
    assert (
        "No method rows yet" in text and "| banking77 | acc | 500 | plain | 1 | 51.3 | 72.6 | 4e-04 |" in text
    )


def test_runs_at_the_majority_class_level_are_counted_and_left_out_of_the_second_comparison(
    results: Path, tmp_path: Path
) -> None:
    rows = read_results(results)
    text = report.build_report(
        rows, tmp_path, split=report.Split.TEST, baseline="plain", robustness=None, majority={"alpha": 55.0}
    )
    lines = text.splitlines()
    single = lines.index("## Regime: single")
    assert lines[single + 2].endswith(
        "| at majority class | Δ test vs plain, seeds both learned [95% CI] | seeds better |"
    )
    # plain's seed 1 has dev 55.0, at the level: smart pairs seeds 2 and 3 (54 - 52, 66 - 60), fgm seed 2 only
    assert lines[single + 4 : single + 7] == [
        "| alpha | acc | 100 | plain | 3 | 52.0 | 50.0–60.0 | 56.0 | - | - | - | 1/3 | - | - |",
        "| alpha | acc | 100 | smart | 3 | 54.0 | 51.0–66.0 | 61.0 | +3.0 [+1.0, +6.0] | 3/3 | 3.00 | 0/3 | "
        "+4.0 [+2.0, +6.0] | 2/2 |",
        "| alpha | acc | 100 | fgm | 2 | 53.0 | 50.0–56.0 | 58.5 | +2.0 [+0.0, +4.0] | 1/2 | 2.00 | 0/2 | "
        "+4.0 [+4.0, +4.0] | 1/1 |",
    ]
    beta = next(line for line in lines if line.startswith("| beta | pearson | 100 | smart |"))
    assert beta.endswith("| 3.00 | - | - | - |")  # no level for a regression task
    assert any(line.startswith("At majority class:") and "(alpha 55.0)" in line for line in lines)
    plain = report.build_report(rows, tmp_path, split=report.Split.TEST, baseline="plain", robustness=None)
    assert "at majority class" not in plain
