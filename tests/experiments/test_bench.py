"""The benchmarks still run (on a tiny random encoder, one step): they must not rot between measurements."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from experiments.bench import adv_speed, throughput
from tests.conftest import TINY_WORDS
from tests.mt_dnn.conftest import make_tiny_run

DEMO_TASK_DEF = Path(__file__).resolve().parents[2] / "experiments" / "demo" / "demo_task_def.yml"


def write_banking_rows(data: Path, sizes: dict[str, int]) -> None:
    """banking77-shaped JSONL (the demo task's label names, tiny-vocabulary text) for ``split: rows``."""
    labels = yaml.safe_load(DEMO_TASK_DEF.read_text(encoding="utf-8"))["banking77"]["labels"][:4]
    rng = random.Random(0)
    data.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        rows = [
            {
                "uid": f"{split}{i}",
                "label": rng.choice(labels),
                "premise": " ".join(rng.sample(TINY_WORDS, 6)),
            }
            for i in range(n)
        ]
        (data / f"banking77_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def tiny_run(tmp_path: Path, tiny_tokenizer_dir: Path) -> dict[str, Any]:
    return make_tiny_run(tmp_path / "tiny", tiny_tokenizer_dir)


def test_adv_speed_runs_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    seconds = adv_speed.main(
        ["--tiny", "--steps", "1", "--warmup", "0", "--threads", "1", "--batch_size", "4", "--seq_len", "16"]
    )
    assert {mode.name for mode in adv_speed.MODES} <= set(seconds)
    assert all(value > 0 for value in seconds.values())
    printed = capsys.readouterr().out
    assert "x plain" in printed and "SMART K=1 + Bregman" in printed


def test_adv_speed_modes_times_only_those_and_plain() -> None:
    seconds = adv_speed.main(
        ["--tiny", "--steps", "1", "--warmup", "0", "--threads", "1", "--batch_size", "4", "--seq_len", "16",
         "--modes", "Bregman only,R-Drop"]
    )  # fmt: skip
    assert set(seconds) == {"plain", "Bregman only", "R-Drop"}
    assert all(value > 0 for value in seconds.values())


def test_adv_speed_memory_measures_every_mode_in_a_process_of_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One mode (every child imports torch and transformers), a backward-owning one."""
    peaks = adv_speed.main(
        ["--tiny", "--memory", "--modes", "FreeLB K=2", "--steps", "1", "--warmup", "0", "--threads", "1",
         "--batch_size", "16", "--seq_len", "64"]
    )  # fmt: skip
    # The rise over what the process held before its first step (the step's activations, gradients, AdamW).
    assert set(peaks) == {"FreeLB K=2"}
    assert all(rise > 0 for rise in peaks.values())
    printed = capsys.readouterr().out
    assert "step rise MB" in printed and "failed" not in printed


def test_throughput_runs_on_a_tiny_encoder(tmp_path: Path, tiny_run: dict[str, Any]) -> None:
    """HF loop vs ours plain vs ours SMART, end to end in subprocesses, on banking77-shaped rows."""
    data = tmp_path / "demo"
    write_banking_rows(data, {"train": 24, "dev": 8})
    results = throughput.main(
        [
            "--data_dir", str(data), "--model", tiny_run["init_checkpoint"], "--n_train", "24", "--n_dev", "8",
            "--batch_size", "8", "--threads", "1", "--no_bregman_run",
        ]
    )  # fmt: skip
    assert set(results) == {"hf loop", "ours plain", "ours SMART"}
    for row in results.values():
        assert row["steps"] == 3 and row["examples"] == 24
        assert row["seconds"] > 0 and 0 <= row["padding"] < 1 and row["peak_mb"] > 0
        assert 0 <= row["dev_acc"] <= 100


def test_ddp_scaling_runs_one_and_two_processes(tmp_path: Path, tiny_run: dict[str, Any]) -> None:
    from experiments.bench import ddp_scaling

    data = tmp_path / "demo"
    write_banking_rows(data, {"train": 32, "dev": 8})
    results = ddp_scaling.main(
        ["--data_dir", str(data), "--model", tiny_run["init_checkpoint"], "--n_train", "32", "--batch_size", "4",
         "--no_smart"]
    )  # fmt: skip
    assert set(results) == {"plain x1", "plain x2"}
    assert results["plain x1"]["steps"] == results["plain x2"]["steps"] == 4
    assert all(row["seconds"] > 0 for row in results.values())


# --- robustness.py ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attack_data(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> dict[str, Any]:
    """Toy token-id caches of the four test tasks (read-only), shared by the robustness tests."""
    return make_tiny_run(tmp_path_factory.mktemp("attack_data"), tiny_tokenizer_dir, n_train=8)


def _tiny_checkpoints(root: Path, tokenizer: Any, seeds: dict[str, int]) -> dict[str, Path]:
    from tests.mt_dnn.conftest import save_tiny_checkpoint

    return {
        name: save_tiny_checkpoint(root / name / "best", tokenizer, seed=seed) for name, seed in seeds.items()
    }


def _clean_accuracy(checkpoint: Path, split_dir: Path) -> float:
    from data_utils.cache import load_split
    from data_utils.dataset import Collator, TaskDataset
    from mt_dnn.inference import evaluate
    from mt_dnn.model import MTDNNModel

    model = MTDNNModel.load(checkpoint)
    task_def = model.task_defs["single"]
    dataset = TaskDataset(task_def, load_split(split_dir))
    return evaluate(model, dataset, Collator(model.task_defs, pad_token_id=0), batch_size=8).metrics["acc"]


def test_robustness_attacks_checkpoints_and_writes_curves_and_plot(
    tmp_path: Path,
    attack_data: dict[str, Any],
    tiny_tokenizer: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from experiments.bench import robustness
    from experiments.quality.robustness import load_robustness

    checkpoints = _tiny_checkpoints(tmp_path / "ckpt", tiny_tokenizer, {"plain": 0, "smart": 1})
    split_dir = Path(attack_data["data_dir"]) / "single_dev"
    out = tmp_path / "attack"
    argv = [
        "--checkpoint", f"plain={checkpoints['plain']}", "--checkpoint", f"smart={checkpoints['smart']}",
        "--split_dir", str(split_dir), "--task", "single", "--radii", "0,0.5,3", "--steps", "3",
        "--output_dir", str(out), "--threads", "1",
    ]  # fmt: skip
    document = robustness.main(argv)
    curves = load_robustness(out / robustness.OUTPUT_JSON)
    assert curves.radii == (0.0, 0.5, 3.0) and set(curves.methods) == {"plain", "smart"}
    assert (out / robustness.OUTPUT_PNG).stat().st_size > 1000
    for method, checkpoint in checkpoints.items():
        # radius 0 is the clean model's accuracy; a strong attack does not raise it
        assert curves.methods[method][0] == pytest.approx(_clean_accuracy(checkpoint, split_dir), abs=1e-9)
        assert curves.methods[method][2] <= curves.methods[method][0]
    assert document["runs"][0]["rows"] == 16 and document["settings"]["steps"] == 3
    assert "mean word-embedding norm" in capsys.readouterr().out
    assert all(run["skipped_batches"] == [0, 0, 0] for run in document["runs"])

    attacked: list[str] = []
    attack_one = robustness.attack_one

    def counting(target: Any, args: Any) -> dict[str, Any]:
        attacked.append(target.method)
        return attack_one(target, args)

    monkeypatch.setattr(robustness, "attack_one", counting)
    # Run again with one more checkpoint: only that one is attacked, the finished runs are taken as they were.
    extra = _tiny_checkpoints(tmp_path / "ckpt", tiny_tokenizer, {"fgm": 2})["fgm"]
    again = robustness.main([*argv, "--checkpoint", f"fgm={extra}"])
    assert attacked == ["fgm"]
    assert again["runs"][:2] == document["runs"] and again["runs"][2]["method"] == "fgm"
    assert set(again["methods"]) == {"plain", "smart", "fgm"}
    # Another name for a checkpoint is another target; other attack settings redo every run.
    robustness.main([*argv[:2], "--checkpoint", f"renamed={checkpoints['smart']}", *argv[4:]])
    assert attacked == ["fgm", "renamed"]
    robustness.main([*argv, "--steps", "2"])
    assert attacked == ["fgm", "renamed", "plain", "smart"]


def test_robustness_from_grid_results_averages_the_seeds_of_a_method(
    tmp_path: Path, attack_data: dict[str, Any], tiny_tokenizer: Any
) -> None:
    from experiments.bench import robustness
    from experiments.quality.results import ResultRow, append_row

    checkpoints = _tiny_checkpoints(tmp_path / "runs", tiny_tokenizer, {"s1": 0, "s2": 1, "other": 2})
    results = tmp_path / "results.jsonl"
    for checkpoint, (method, seed, task) in zip(
        checkpoints.values(),
        [("plain", 1, "single"), ("plain", 2, "single"), ("plain", 1, "pair")],
        strict=True,
    ):
        for regime in ("single", "mtl"):  # the mtl rows are another regime's: left out
            row = ResultRow(
                regime=regime, method=method, task=task, n_train=16, seed=seed, metric="acc", dev=50.0,
                test=None, dev_metrics={}, test_metrics={}, steps=1, timed_steps=1, train_step_seconds=1.0,
                wall_seconds=1.0, resumed=False, out_dir=str(checkpoint.parent), flags=[],
                train_argv=["--data_dir", attack_data["data_dir"], "--output_dir", str(checkpoint.parent)],
            )  # fmt: skip
            append_row(results, row)
    document = robustness.main(
        [
            "--results", str(results), "--task", "single", "--split", "dev", "--radii", "0,1", "--steps", "2",
            "--max_rows", "10", "--output_dir", str(tmp_path / "attack"),
        ]
    )  # fmt: skip
    runs = document["runs"]
    assert [(run["method"], run["seed"]) for run in runs] == [
        ("plain", 1),
        ("plain", 2),
    ]  # the pair row is out
    assert all(run["rows"] == 10 for run in runs)
    expected = [(a + b) / 2 for a, b in zip(runs[0]["scores"], runs[1]["scores"], strict=True)]
    assert document["methods"] == {"plain": pytest.approx(expected)}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--checkpoint", "no-equals-sign", "--split_dir", "x"], "expected METHOD=DIR"),
        (["--checkpoint", "plain=CKPT"], "needs --split_dir"),
        (["--checkpoint", "plain=CKPT", "--split_dir", "SPLIT", "--task", "nope"], "no task 'nope'"),
        (["--checkpoint", "plain=missing", "--split_dir", "SPLIT"], "not a checkpoint"),
        (["--checkpoint", "plain=CKPT", "--split_dir", "SPLIT_TEST"], "has no labels"),
    ],
)
def test_robustness_user_mistakes_are_one_line_errors(
    extra: list[str],
    message: str,
    tmp_path: Path,
    attack_data: dict[str, Any],
    tiny_tokenizer: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from experiments.bench import robustness

    checkpoint = _tiny_checkpoints(tmp_path / "ckpt", tiny_tokenizer, {"plain": 0})["plain"]
    data = Path(attack_data["data_dir"])
    argv = [
        item.replace("CKPT", str(checkpoint)).replace("SPLIT_TEST", str(data / "single_test"))
        for item in extra
    ]
    argv = [item.replace("SPLIT", str(data / "single_dev")) for item in argv]
    if "--task" not in argv:
        argv += ["--task", "single"]
    capsys.readouterr()  # what saving the checkpoint printed
    with pytest.raises(SystemExit) as exit_info:
        robustness.main([*argv, "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_peak_memory_sees_a_new_allocation_and_restarts_after_a_reset() -> None:
    import torch

    from experiments.bench.memory import peak_memory_mb, reset_peak_memory

    before = reset_peak_memory("cpu")
    block = torch.ones(64 * 2**20 // 4)  # 64 MB, written, so resident
    peak = peak_memory_mb("cpu")
    assert peak >= before + 60
    del block
    after = reset_peak_memory("cpu")
    if Path("/proc/self/clear_refs").exists():  # Linux: the high-water mark restarts from what is resident
        assert peak_memory_mb("cpu") < peak - 30 and after < peak - 30


def test_perturbation_bench_measures_ratios_at_defaults_and_the_cost_of_half_precision(
    tmp_path: Path,
) -> None:
    from data_utils.task_def import load_task_defs
    from experiments.bench import perturbation

    defs = load_task_defs(perturbation.TASK_DEF)
    rng = random.Random(0)
    intents, pairs = defs["banking77"].labels, defs["epistemic"].labels
    with (tmp_path / "banking77_train.jsonl").open("w", encoding="utf-8") as out:
        for i in range(8):
            text = " ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(3, 12)))
            out.write(json.dumps({"uid": str(i), "label": intents[i % len(intents)], "premise": text}) + "\n")
    with (tmp_path / "epistemic_train.jsonl").open("w", encoding="utf-8") as out:
        for i in range(8):
            premise = " ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(5, 15)))
            row = {"uid": str(i), "label": pairs[i % 2], "premise": premise, "hypothesis": premise[:20]}
            out.write(json.dumps(row) + "\n")
    document = perturbation.main(
        [
            "--tiny",
            "--data_dir", str(tmp_path),
            "--tasks", "banking77,epistemic",
            "--batches", "1",
            "--batch_size", "8",
            "--threads", "1",
            "--output", str(tmp_path / "out.json"),
        ]
    )  # fmt: skip
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(json.dumps(document))
    ratios = document["delta_ratio_at_defaults"]
    for task in ("banking77", "epistemic"):  # relative defaults: the ratio is the radius on any encoder
        assert ratios["fgm"][task] == pytest.approx(0.02, rel=1e-3)
        assert ratios["pgd"][task] <= 0.02 * (1 + 1e-4)
        assert ratios["fgsm"][task] == pytest.approx(0.01, rel=0.02)
        assert ratios["r3f"][task] == pytest.approx(0.01, rel=0.2)
        assert ratios["rdrop"][task] == 0
    cosines = {
        (row["radius"], row["sigma"], row["task"]): row for row in document["inner_gradient_cosine_to_fp32"]
    }
    for task in ("banking77", "epistemic"):
        # The paper's absolute 1e-5 is below bf16's resolution: its ascent direction is mostly rounding noise.
        assert cosines[("absolute", 1e-5, task)]["bf16"] < 0.6
        # A perturbation of 10% of a token's scale survives both half precisions.
        assert cosines[("relative", 0.1, task)]["bf16"] > 0.95
        assert cosines[("relative", 0.1, task)]["fp16"] > 0.95
