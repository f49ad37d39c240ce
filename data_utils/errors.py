"""User-facing errors: one clear line, no traceback."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """A mistake in the user's input (a file, a flag, a row). CLIs print it as one line and exit 2."""


class RowError(Exception):
    """A problem with one row of a data file; the reader adds the file and line (``file:line: ...``)."""

    def __init__(self, field_name: str | None, problem: str) -> None:
        where = f"field '{field_name}': " if field_name else ""
        super().__init__(f"{where}{problem}")


def exit_on_user_error(main: Callable[P, R]) -> Callable[P, R]:
    """Wrap a CLI ``main`` so a ``UserError`` prints ``error: <message>`` to stderr and exits 2.

    The environment's refusals are treated the same way, as one line naming the path: an ``OSError`` with
    a file name (a read-only or full disk, a missing or locked file, a folder where a file should be). An
    ``OSError`` without one, and every other exception, is a bug and keeps its traceback."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as error:
            if error.filename is None:
                raise
            print(f"error: {environment_message(error)}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def environment_message(error: OSError) -> str:
    """``<path>: <what the system said>`` and, for the common cases, what to do."""
    path = error.filename if error.filename2 is None else f"{error.filename} -> {error.filename2}"
    hints = {
        errno.ENOSPC: "the disk is full: free space or write elsewhere",
        errno.EROFS: "the file system is read-only: write elsewhere",
        errno.EACCES: "permission denied: check the path's permissions or write elsewhere",
        errno.EDQUOT: "the disk quota is exceeded: free space or write elsewhere",
    }
    return f"{path}: {hints.get(error.errno or 0, error.strerror or str(error))}"
