"""experiments/bench/plugin_speed.py still runs on every host (tiny random BERT, one step per mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.bench import plugin_speed


def test_every_host_times_its_plain_step_and_the_methods_it_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("fastai")
    argv = ["--tiny", "--steps", "1", "--warmup", "0", "--repeats", "1", "--methods", "smart,freelb"]
    results = plugin_speed.main([*argv, "--scratch", str(tmp_path), "--json", str(tmp_path / "figures.json")])
    assert set(results) == {"torch", "hf", "fastai"}
    assert set(results["torch"]) == set(results["hf"]) == {"plain", "smart", "freelb"}
    assert set(results["fastai"]) == {"plain", "smart"}  # FreeLB owns its backward passes
    assert all(value > 0 for row in results.values() for value in row.values())
    table = capsys.readouterr().out
    assert "| freelb |" in table and "n/a" in table and (tmp_path / "figures.json").is_file()


def test_an_unknown_method_is_named() -> None:
    with pytest.raises(SystemExit):
        plugin_speed.main(["--tiny", "--methods", "frelb"])
