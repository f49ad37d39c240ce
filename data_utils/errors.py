"""User-facing errors: one clear line, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """A mistake in the user's input (a file, a flag, a row). CLIs print it as one line and exit 2."""


def exit_on_user_error(main: Callable[P, R]) -> Callable[P, R]:
    """Wrap a CLI ``main`` so a ``UserError`` prints ``error: <message>`` to stderr and exits 2."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
