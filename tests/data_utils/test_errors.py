"""The CLI wrapper: a user mistake or an environment refusal is one ``error:`` line and exit 2; a bug is not."""

from __future__ import annotations

import errno

import pytest

from data_utils.errors import UserError, exit_on_user_error


def _cli(error: BaseException) -> object:
    @exit_on_user_error
    def main() -> None:
        raise error

    return main


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (UserError("data.yml: key 'x': unknown"), "error: data.yml: key 'x': unknown"),
        (OSError(errno.ENOSPC, "No space left on device", "out/last"), "error: out/last: the disk is full"),
        (
            OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"),
            "error: /mnt/ro/x: the file system is read-only",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "x.jsonl"), "error: x.jsonl: permission denied"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "a.yml"),
            "error: a.yml: No such file or",
        ),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "out"), "error: out: Is a directory"),
    ],
)
def test_user_and_environment_errors_are_one_line_and_exit_2(
    error: BaseException, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _cli(error)()  # type: ignore[operator]
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1


@pytest.mark.parametrize("error", [OSError("no file name: a bug, not the environment"), KeyError("bug")])
def test_a_bug_keeps_its_traceback(error: BaseException) -> None:
    with pytest.raises(type(error)):
        _cli(error)()  # type: ignore[operator]
