"""The benchmarks still run (on a tiny random encoder, one step): they must not rot between measurements."""

from __future__ import annotations

import pytest

from experiments.bench import adv_speed


def test_adv_speed_runs_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    seconds = adv_speed.main(
        ["--tiny", "--steps", "1", "--warmup", "0", "--threads", "1", "--batch_size", "4", "--seq_len", "16"]
    )
    assert {mode.name for mode in adv_speed.MODES} <= set(seconds)
    assert all(value > 0 for value in seconds.values())
    printed = capsys.readouterr().out
    assert "x plain" in printed and "SMART K=1 + Bregman" in printed
