"""The report's PNG figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.quality.robustness import RobustnessCurves  # noqa: E402
from experiments.quality.summary import CellSummary  # noqa: E402

DPI = 120
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per method, the same in every figure of a report."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: cycle[index % len(cycle)] for index, name in enumerate(names)}


def quality_vs_size(
    summaries: Sequence[CellSummary], split: str, palette: dict[str, str], path: Path
) -> None:
    """One panel per task: the metric's median over seeds against the training-set size, one line per
    method, bars from the lowest to the highest seed (methods nudged sideways so their bars do not hide)."""
    tasks = list(dict.fromkeys(summary.task for summary in summaries))
    methods = list(dict.fromkeys(summary.method for summary in summaries))
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        cells = [summary for summary in summaries if summary.task == task and summary.score is not None]
        sizes = sorted({summary.n_train for summary in cells})
        for index, method in enumerate(methods):
            points = sorted((s.n_train, s.score) for s in cells if s.method == method and s.score is not None)
            if not points:
                continue
            nudge = 1 + 0.03 * (index - (len(methods) - 1) / 2)
            xs = [n * nudge for n, _ in points]
            medians = [spread.median for _, spread in points]
            errors = [
                [spread.median - spread.low for _, spread in points],
                [spread.high - spread.median for _, spread in points],
            ]
            axis.errorbar(
                xs, medians, yerr=errors, marker="o", capsize=3, label=method, color=palette[method]
            )
        axis.set_xscale("log")
        axis.set_xticks(sizes, [str(size) for size in sizes])
        axis.minorticks_off()
        axis.set_title(task)
        axis.set_xlabel("training rows")
        axis.set_ylabel(f"{split} {cells[0].metric if cells else ''} (median, min-max over seeds)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def cost_vs_gain(
    summaries: Sequence[CellSummary], baseline: str, palette: dict[str, str], path: Path
) -> bool:
    """Each method's cells: step-time ratio to the baseline (x) against the mean paired gain over it (y, with
    its bootstrap interval). Returns False (and writes nothing) when no cell has both."""
    cells = [s for s in summaries if s.versus_baseline is not None and s.step_ratio is not None]
    if not cells:
        return False
    methods = list(dict.fromkeys(summary.method for summary in cells))
    tasks = list(dict.fromkeys(summary.task for summary in cells))
    figure, axis = plt.subplots(figsize=(6, 4.2))
    for summary in cells:
        gain = summary.versus_baseline
        assert gain is not None and summary.step_ratio is not None
        axis.errorbar(
            [summary.step_ratio],
            [gain.mean],
            yerr=[[gain.mean - gain.low], [gain.high - gain.mean]],
            marker=MARKERS[tasks.index(summary.task) % len(MARKERS)],
            color=palette[summary.method],
            capsize=3,
            linestyle="none",
        )
        axis.annotate(f"n={summary.n_train}", (summary.step_ratio, gain.mean), fontsize=7, xytext=(4, 3),
                      textcoords="offset points")  # fmt: skip
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.axvline(1, color="grey", linewidth=0.8)
    for method in methods:
        axis.plot([], [], color=palette[method], marker="o", linestyle="none", label=method)
    for index, task in enumerate(tasks):
        axis.plot([], [], color="black", marker=MARKERS[index % len(MARKERS)], linestyle="none", label=task)
    axis.set_xlabel(f"training step time / {baseline}'s (median over seeds)")
    axis.set_ylabel(f"gain over {baseline} (mean of seeds, 95% bootstrap)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return True


def robustness(curves: RobustnessCurves, palette: dict[str, str], path: Path) -> None:
    """The metric against the perturbation radius, one line per method."""
    figure, axis = plt.subplots(figsize=(6, 4.2))
    for index, (method, values) in enumerate(curves.methods.items()):
        marker = MARKERS[index % len(MARKERS)]  # more methods than colours: the marker still tells them apart
        axis.plot(curves.radii, values, marker=marker, label=method, color=palette[method])
    axis.set_xlabel("perturbation radius")
    axis.set_ylabel(curves.metric)
    axis.set_title(f"{curves.task}: {curves.metric} under perturbation")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
