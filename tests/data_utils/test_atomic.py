from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from data_utils import atomic
from data_utils.atomic import (
    STALE_AFTER_S,
    aside_path,
    atomic_directory,
    atomic_write_text,
    clean_stale_temporaries,
    recover_interrupted_replace,
)

REPO = Path(__file__).resolve().parents[2]
HOST = atomic._HOST


def make_folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "data.txt").write_text(text, encoding="utf-8")
    return path


def content(path: Path) -> str:
    return (path / "data.txt").read_text(encoding="utf-8")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def fail_on_call(monkeypatch: pytest.MonkeyPatch, *numbers: int) -> list[tuple[str, str]]:
    """Make ``os.replace`` inside data_utils.atomic raise a kill-like error on the given calls (1-based)."""
    calls: list[tuple[str, str]] = []
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) in numbers:
            raise KeyboardInterrupt(f"killed at rename {len(calls)}")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    return calls


# --- naming ------------------------------------------------------------------------------------------------


def test_temp_names_carry_the_writer(tmp_path: Path) -> None:
    seen: list[str] = []
    with atomic_directory(tmp_path / "out") as tmp:
        seen.append(tmp.name)
    assert re.fullmatch(rf"\.out\.{HOST}\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", seen[0])
    assert aside_path(tmp_path / "out") == tmp_path / ".out.atomic.old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- atomic_directory and an interrupted replace ------------------------------------------------------------


def test_a_failed_second_rename_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = make_folder(tmp_path / "ckpt", "old")
    calls = fail_on_call(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as tmp:
        (tmp / "data.txt").write_text("new", encoding="utf-8")
    assert [dst for _, dst in calls] == [".ckpt.atomic.old", "ckpt", "ckpt"]  # aside, in (fails), back
    assert content(target) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_kill_between_the_renames_is_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = make_folder(tmp_path / "ckpt", "old")
    fail_on_call(monkeypatch, 2, 3)  # the rename in and the way back both die: what a kill -9 leaves
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as tmp:
        (tmp / "data.txt").write_text("new", encoding="utf-8")
    monkeypatch.undo()
    assert not target.exists() and content(aside_path(target)) == "old"
    assert recover_interrupted_replace(target) is True
    assert content(target) == "old" and not aside_path(target).exists()
    assert recover_interrupted_replace(target) is False  # nothing (more) to do
    assert recover_interrupted_replace(tmp_path / "never-written") is False


def test_the_next_write_recovers_first_then_replaces(tmp_path: Path) -> None:
    make_folder(aside_path(tmp_path / "ckpt"), "old")  # a kill between the renames, path missing
    seen: list[str] = []
    with atomic_directory(tmp_path / "ckpt") as tmp:
        seen.append(content(tmp_path / "ckpt"))  # the old copy is back before the new one is written
        (tmp / "data.txt").write_text("new", encoding="utf-8")
    assert seen == ["old"] and content(tmp_path / "ckpt") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_names_that_are_not_ours_are_left_alone(tmp_path: Path) -> None:
    make_folder(tmp_path / ".ckpt.old", "a person's backup")  # also the aside name of older versions
    assert recover_interrupted_replace(tmp_path / "ckpt") is False and not (tmp_path / "ckpt").exists()
    assert clean_stale_temporaries(tmp_path) == [] and (tmp_path / ".ckpt.old").is_dir()


def test_the_old_copy_is_deleted_only_once_the_new_one_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = make_folder(tmp_path / "ckpt", "old")
    make_folder(aside_path(target), "older")  # left by a replace that completed; ``ckpt`` is newer
    states: list[tuple[str, str, str]] = []
    real = shutil.rmtree

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        states.append((Path(path).name, content(Path(path)), content(target) if target.exists() else "-"))
        real(path, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree)
    with atomic_directory(target) as tmp:
        (tmp / "data.txt").write_text("new", encoding="utf-8")
    # the leftover goes while "old" is in place, the old copy once "new" is
    assert states == [(".ckpt.atomic.old", "older", "old"), (".ckpt.atomic.old", "old", "new")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_an_error_in_the_body_keeps_the_old_folder_and_leaves_nothing(tmp_path: Path) -> None:
    target = make_folder(tmp_path / "ckpt", "old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "data.txt").write_text("half", encoding="utf-8")
        raise RuntimeError("disk full")
    assert content(target) == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# --- clean_stale_temporaries -------------------------------------------------------------------------------


def test_temps_of_dead_writers_go_and_live_ones_stay(tmp_path: Path) -> None:
    dead = tmp_path / f".train.{HOST}.{dead_pid()}.0123abcd.tmp"
    make_folder(dead, "half")
    dead_file = tmp_path / f".manifest.json.{HOST}.{dead_pid()}.89abcdef.tmp"
    dead_file.write_text("{", encoding="utf-8")
    mine = make_folder(tmp_path / f".dev.{HOST}.{os.getpid()}.0123abcd.tmp", "writing")
    parent = make_folder(tmp_path / f".test.{HOST}.{os.getppid()}.0123abcd.tmp", "writing")
    elsewhere = make_folder(tmp_path / f".x.other-host.{dead_pid()}.0123abcd.tmp", "writing")
    unrelated = [
        make_folder(tmp_path / ".git", "keep"),
        make_folder(tmp_path / "train", "keep"),
        make_folder(tmp_path / ".notes.tmp", "keep"),  # not our pattern
    ]
    nested = make_folder(tmp_path / "train" / f".deep.{HOST}.{dead_pid()}.0123abcd.tmp", "not looked at")

    assert clean_stale_temporaries(tmp_path) == sorted([dead, dead_file])
    assert not dead.exists() and not dead_file.exists()
    for kept in (mine, parent, elsewhere, nested, *unrelated):
        assert kept.exists(), kept
    assert clean_stale_temporaries(tmp_path / "absent") == []


def test_temps_of_unknown_writers_go_once_untouched_for_long(tmp_path: Path) -> None:
    legacy = make_folder(
        tmp_path / ".train.0123456789ab.tmp", "half"
    )  # the naming before the writer was in it
    elsewhere = make_folder(tmp_path / f".dev.other-host.{os.getpid()}.0123abcd.tmp", "half")
    assert clean_stale_temporaries(tmp_path) == []
    old = time.time() - STALE_AFTER_S - 60
    for folder in (legacy, elsewhere):
        os.utime(folder / "data.txt", (old, old))
        os.utime(folder, (old, old))
    assert clean_stale_temporaries(tmp_path) == sorted([elsewhere, legacy])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_write_in_progress_is_not_stale_by_age(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / ".x.0123456789ab.tmp", "")
    old = time.time() - STALE_AFTER_S - 60
    os.utime(folder, (old, old))  # the folder is old but a file in it is being written now
    assert clean_stale_temporaries(tmp_path) == [] and folder.exists()


def test_asides_go_when_their_original_is_in_place_and_come_back_when_it_is_not(tmp_path: Path) -> None:
    make_folder(tmp_path / "a", "new")
    leftover = make_folder(aside_path(tmp_path / "a"), "old")
    make_folder(aside_path(tmp_path / "b"), "only copy")
    assert clean_stale_temporaries(tmp_path) == [leftover]
    assert content(tmp_path / "a") == "new" and content(tmp_path / "b") == "only copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_a_kill_9_inside_a_write_leaves_a_temp_the_next_clean_removes(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\n"
        "from data_utils.atomic import atomic_directory\n"
        "with atomic_directory(sys.argv[1]) as tmp:\n"
        "    (tmp / 'part.bin').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    target = tmp_path / "cache" / "pair_train"
    result = subprocess.run([sys.executable, "-c", script, str(target)], cwd=REPO, timeout=120)
    assert result.returncode == -9
    left = [p.name for p in (tmp_path / "cache").iterdir()]
    assert len(left) == 1 and re.fullmatch(rf"\.pair_train\.{HOST}\.\d+\.[0-9a-f]{{8}}\.tmp", left[0])
    assert [p.name for p in clean_stale_temporaries(tmp_path / "cache")] == left
    assert list((tmp_path / "cache").iterdir()) == []


def test_atomic_write_text_uses_the_same_temp_naming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_on_call(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "manifest.json", "{}")
    assert list(tmp_path.iterdir()) == []  # an exception removes its temp; only a kill leaves one
