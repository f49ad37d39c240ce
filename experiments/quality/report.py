"""The grid's results as a Markdown table and PNG plots.

    python experiments/quality/report.py --results out/quality/results.jsonl --output_dir out/quality/report
        [--robustness robustness.json] [--split test|dev] [--baseline plain] [--grid study.yml]

Writes ``report.md`` and ``quality_vs_n_<regime>.png``, ``cost_vs_gain_<regime>.png`` (and
``robustness.png`` with ``--robustness``) into ``--output_dir``, all at once: the folder is built beside its
place and renamed in, so a reader never sees half a report. The table is printed too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.atomic import atomic_directory  # noqa: E402
from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from experiments.quality import plots  # noqa: E402
from experiments.quality.grid import Regime, load_grid  # noqa: E402
from experiments.quality.majority import majority_levels  # noqa: E402
from experiments.quality.results import ResultRow, read_results  # noqa: E402
from experiments.quality.robustness import load_robustness  # noqa: E402
from experiments.quality.stats import BOOTSTRAP_SEED, CONFIDENCE, RESAMPLES, PairedDifference, Spread  # noqa: E402
from experiments.quality.summary import (  # noqa: E402
    CellSummary,
    LrSelection,
    RegimeComparison,
    Split,
    compare_regimes,
    lr_selections,
    summarise,
)
from experiments.quality.tuning import is_tuning_row, lr_spelling  # noqa: E402

MISSING = "-"


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f}"


def _median(spread: Spread | None) -> str:
    return MISSING if spread is None else f"{spread.median:.1f}"


def _range(spread: Spread | None) -> str:
    return MISSING if spread is None else f"{spread.low:.1f}–{spread.high:.1f}"


def _difference(difference: PairedDifference | None) -> str:
    if difference is None:
        return MISSING
    return f"{difference.mean:+.1f} [{difference.low:+.1f}, {difference.high:+.1f}]"


def _wins(difference: PairedDifference | None) -> str:
    return MISSING if difference is None else f"{difference.wins}/{difference.count}"


def _ratio(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _count(counts: tuple[int, int] | None) -> str:
    return MISSING if counts is None else f"{counts[0]}/{counts[1]}"


def has_convergence(summaries: Sequence[CellSummary]) -> bool:
    """Whether the rows record their best step (older results do not: their tables stay as they were)."""
    return any(summary.not_converged is not None for summary in summaries)


def has_majority(summaries: Sequence[CellSummary]) -> bool:
    """Whether some task has a majority-class level (report.py --grid)."""
    return any(summary.at_majority is not None for summary in summaries)


def method_table(summaries: Sequence[CellSummary], split: Split, baseline: str) -> list[str]:
    extended = has_convergence(summaries)
    majority = has_majority(summaries)
    extra = f" not converged | train time × {baseline} |" if extended else ""
    if majority:
        extra += f" at majority class | Δ {split} vs {baseline}, seeds both learned [95% CI] | seeds better |"
    lines = [
        f"| task | metric | n_train | method | seeds | {split} median | {split} min–max | dev median | "
        f"Δ {split} vs {baseline} [95% CI] | seeds better | step time × {baseline} |{extra}",
        "|---|---|---|---|---|---|---|---|---|---|---|"
        + ("---|---|" if extended else "")
        + ("---|---|---|" if majority else ""),
    ]
    for summary in summaries:
        seeds = summary.score.count if summary.score is not None else 0
        more = f" {_count(summary.not_converged)} | {_ratio(summary.train_ratio)} |" if extended else ""
        if majority:
            learned = summary.versus_baseline_learned
            more += f" {_count(summary.at_majority)} | {_difference(learned)} | {_wins(learned)} |"
        lines.append(
            f"| {summary.task} | {summary.metric} | {summary.n_train} | {summary.method} | {seeds} | "
            f"{_median(summary.score)} | {_range(summary.score)} | {_median(summary.dev)} | "
            f"{_difference(summary.versus_baseline)} | {_wins(summary.versus_baseline)} | "
            f"{_ratio(summary.step_ratio)} |{more}"
        )
    return lines


def lr_table(selections: Sequence[LrSelection]) -> list[str]:
    """Per task, size and tuned method: the dev score at each candidate learning rate, the winner, and the
    methods that took it."""
    rates = sorted({lr for selection in selections for lr in selection.dev_by_lr})
    lines = [
        "| task | metric | n_train | method | seed | "
        + " | ".join(f"dev @ {lr_spelling(lr)}" for lr in rates)
        + " | chosen | reused by |",
        "|---|---|---|---|---|" + "---|" * len(rates) + "---|---|",
    ]
    for selection in selections:
        devs = " | ".join(
            _number(selection.dev_by_lr[lr]) if lr in selection.dev_by_lr else MISSING for lr in rates
        )
        lines.append(
            f"| {selection.task} | {selection.metric} | {selection.n_train} | {selection.method} | "
            f"{selection.seed} | {devs} | {lr_spelling(selection.winner)} | "
            f"{', '.join(selection.reused_by) or MISSING} |"
        )
    return lines


def regime_table(comparisons: Sequence[RegimeComparison], split: Split) -> list[str]:
    regimes = [regime.value for regime in Regime if regime is not Regime.SINGLE]
    lines = [
        f"| task | metric | n_train | method | single | {' | '.join(regimes)} | "
        + " | ".join(f"Δ {regime} vs single [95% CI]" for regime in regimes)
        + " |",
        "|---|---|---|---|---|" + "---|" * (2 * len(regimes)),
    ]
    for comparison in comparisons:
        scores = " | ".join(_median(comparison.scores.get(regime)) for regime in regimes)
        versus = " | ".join(_difference(comparison.versus_single.get(regime)) for regime in regimes)
        lines.append(
            f"| {comparison.task} | {comparison.metric} | {comparison.n_train} | {comparison.method} | "
            f"{_median(comparison.single)} | {scores} | {versus} |"
        )
    return lines


def describe(rows: Sequence[ResultRow], split: Split, baseline: str) -> list[str]:
    def listed(values: Sequence[object]) -> str:
        return ", ".join(map(str, dict.fromkeys(values)))

    return [
        f"{len(rows)} runs: tasks {listed([r.task for r in rows])}; training rows "
        f"{listed(sorted(r.n_train for r in rows))}; seeds {listed(sorted(r.seed for r in rows))}; methods "
        f"{listed([r.method for r in rows])}; regimes {listed([r.regime for r in rows])}.",
        "",
        f"Scores are each task's first metric (0-100) on its {split} split, "
        + ("scored once by the best dev checkpoint" if split is Split.TEST else "at the best dev checkpoint")
        + f"; median and min–max over seeds. Δ vs {baseline}: the mean over seeds of the paired "
        f"difference (same task, size and seed: the same training rows and train.py --seed), with a "
        f"{CONFIDENCE:.0%} percentile bootstrap interval over seeds ({RESAMPLES:,} resamples, numpy seed "
        f"{BOOTSTRAP_SEED}). The interval never reaches past the smallest or largest per-seed difference, "
        "so with three seeds it describes their spread rather than guaranteeing coverage. Seeds better: "
        "seeds on which the method scored strictly higher. Step time: training seconds per optimizer step "
        f"(evaluation and checkpoints excluded) over {baseline}'s on the same seed, median.",
    ]


def describe_extras(
    rows: Sequence[ResultRow],
    summaries: Sequence[CellSummary],
    baseline: str,
    majority: Mapping[str, float] | None = None,
) -> list[str]:
    """What the newer columns and sections mean, said only when the rows have them."""
    lines = []
    if has_convergence(summaries):
        lines.append(
            "Not converged: seeds whose best dev checkpoint was their last step (dev still improving when "
            "training ended), of the seeds that record it. Train time: per-step time × steps over "
            f"{baseline}'s on the same seed, median; with early stopping the methods take different numbers "
            "of steps, so it can differ from the step-time ratio."
        )
    if majority and has_majority(summaries):
        levels = ", ".join(f"{task} {level:.1f}" for task, level in majority.items())
        lines.append(
            "At majority class: seeds whose best dev score is at or below the share of dev's most frequent "
            f"gold label ({levels}): the run never got past answering one label, and early stopping ended it "
            f"there. The last Δ column pairs only the seeds on which neither the method nor {baseline} is at "
            "that level (blank when no such pair is left)."
        )
    tuning = sum(1 for row in rows if is_tuning_row(row))
    if tuning:
        lines.append(
            f"Learning rates were chosen on dev ({tuning} tuning runs, see the selection table; they are "
            "left out of the method tables). A tuned method's tuning-seed row is its winning tuning run, so "
            "its dev score on that seed was picked as the best of the candidates."
        )
    return ["", *lines] if lines else []


def build_report(
    rows: Sequence[ResultRow],
    folder: Path,
    *,
    split: Split,
    baseline: str,
    robustness: Path | None,
    majority: Mapping[str, float] | None = None,
) -> str:
    """Write the PNGs into ``folder`` and return the Markdown that shows them. ``majority``: task -> its
    dev majority-class level, for the 'at majority class' columns."""
    if all(is_tuning_row(row) for row in rows):
        return (
            "\n".join(
                [
                    "# Does adversarial training help? Results of the quality grid",
                    "",
                    "No method rows yet: only learning-rate tuning runs have finished, so 'chosen' is the",
                    "best candidate so far; the grid picks the winner once every candidate has run.",
                    "",
                    "## Learning-rate selection (dev)",
                    "",
                    *lr_table(lr_selections(rows)),
                ]
            )
            + "\n"
        )
    summaries = summarise(rows, split, baseline, majority)
    curves = load_robustness(robustness) if robustness is not None else None
    main_rows = [row for row in rows if not is_tuning_row(row)]
    methods = [baseline, *(row.method for row in main_rows), *(curves.methods if curves is not None else ())]
    palette = plots.colours(list(dict.fromkeys(methods)))
    lines = [
        "# Does adversarial training help? Results of the quality grid",
        "",
        *describe(main_rows, split, baseline),
        *describe_extras(rows, summaries, baseline, majority),
    ]
    regimes = list(dict.fromkeys(summary.regime for summary in summaries))
    for regime in regimes:
        mine = [summary for summary in summaries if summary.regime == regime]
        slug = Regime(regime).slug
        lines += ["", f"## Regime: {regime}", "", *method_table(mine, split, baseline), ""]
        plots.quality_vs_size(mine, split.value, palette, folder / f"quality_vs_n_{slug}.png")
        lines.append(f"![{split} metric vs training rows, {regime}](quality_vs_n_{slug}.png)")
        if plots.cost_vs_gain(mine, baseline, palette, folder / f"cost_vs_gain_{slug}.png"):
            lines += ["", f"![cost vs gain, {regime}](cost_vs_gain_{slug}.png)"]
        else:
            lines += ["", f"No cost-vs-gain plot for {regime}: no method has paired runs with {baseline}."]
    selections = lr_selections(rows)
    if selections:
        lines += ["", "## Learning-rate selection (dev)", "", *lr_table(selections)]
    comparisons = compare_regimes(rows, split, baseline)
    if comparisons:
        lines += ["", "## Multi-task vs single-task", "", *regime_table(comparisons, split)]
    lines += ["", "## Robustness", ""]
    if curves is None:
        lines.append("No robustness curves: run report.py with --robustness FILE (the benchmark's JSON).")
    else:
        plots.robustness(curves, palette, folder / "robustness.png")
        lines.append(f"![{curves.task}: {curves.metric} vs perturbation radius](robustness.png)")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="results.jsonl written by run_grid.py")
    parser.add_argument("--output_dir", type=Path, required=True, help="report.md and the PNGs go here")
    parser.add_argument("--robustness", type=Path, default=None, help="the robustness benchmark's JSON")
    parser.add_argument("--split", choices=[split.value for split in Split], default=Split.TEST.value)
    parser.add_argument("--baseline", default="plain", help="the method the others are compared with")
    parser.add_argument(
        "--grid",
        type=Path,
        default=None,
        help="the grid YAML behind the rows: adds, for its accuracy tasks, the runs at the majority-class "
        "level of dev and the comparison on the seeds where both arms learned",
    )
    return parser


def _check_output_dir(folder: Path) -> None:
    """The report replaces its folder as a whole: refuse one that holds anything but an earlier report."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"--output_dir {folder}: not a folder")
    foreign = sorted(p.name for p in folder.iterdir() if not (p.name == "report.md" or p.suffix == ".png"))
    if foreign:
        raise UserError(
            f"--output_dir {folder}: holds {foreign[0]}, which is not part of a report "
            "(give the report a folder of its own)"
        )


@exit_on_user_error
def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    rows = read_results(args.results)
    if not rows:
        raise UserError(f"{args.results}: no results rows (run experiments/quality/run_grid.py first)")
    methods = sorted({row.method for row in rows})
    tuning_only = all(is_tuning_row(row) for row in rows)  # a grid still choosing its learning rates
    if args.baseline not in methods and not tuning_only:
        raise UserError(f"--baseline {args.baseline}: no rows of that method in {args.results} ({methods})")
    if args.robustness is not None:
        load_robustness(args.robustness)  # a bad file fails before any plotting
    majority = majority_levels(load_grid(args.grid)) if args.grid is not None else None
    _check_output_dir(args.output_dir)
    with atomic_directory(args.output_dir) as folder:
        text = build_report(
            rows,
            folder,
            split=Split(args.split),
            baseline=args.baseline,
            robustness=args.robustness,
            majority=majority,
        )
        (folder / "report.md").write_text(text, encoding="utf-8")
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
