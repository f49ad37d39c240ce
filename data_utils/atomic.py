"""Atomic writes: a reader (or a crash) sees the old content or the new, never half of either.

Names beside the target ``<name>`` (all start with ``.``, so listings of the folder skip them):

- ``.<name>.<host>.<pid>.<8 hex>.tmp``: the temp file or folder a write fills before its rename. A kill
  leaves it behind; ``clean_stale_temporaries`` removes it once its writer is gone.
- ``.<name>.atomic.old``: where ``atomic_directory`` moves the previous ``<name>`` for the instant between
  its two renames. A kill in that instant leaves ``<name>`` missing and this its only copy;
  ``recover_interrupted_replace`` (called by the next ``atomic_directory`` and by
  ``clean_stale_temporaries``) puts it back. One fixed name per target: there is never a choice to make.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "aside_path",
    "atomic_directory",
    "atomic_write_json",
    "atomic_write_text",
    "clean_stale_temporaries",
    "recover_interrupted_replace",
]

logger = logging.getLogger("data_utils.atomic")

# A temp whose writer cannot be checked (another host, an older naming) is stale once nothing in it has
# changed for this long: far beyond any single write, short enough not to hoard disk.
STALE_AFTER_S = 6 * 3600.0
_ASIDE_SUFFIX = ".atomic.old"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]{1,32})\.(?P<pid>\d{1,10})\.[0-9a-f]{8}\.tmp$")
_LEGACY_TEMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")  # before the writer was in the name


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path``, on error it is removed.

    A kill at any point leaves either the previous ``path`` intact, or the new one complete, or (in the
    instant between moving the old folder aside and renaming the new one in) ``path`` missing and the old
    one at ``aside_path(path)``, which the next call (or ``recover_interrupted_replace``) puts back. The
    old copy is deleted only once the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_replace(path)
    tmp = _temp_sibling(path)
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 folders would make a shared output unreadable to others
    try:
        yield tmp
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove(aside_path(path), missing_ok=True)


def _swap_in(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``, moving an existing ``path`` aside first and back if the rename fails."""
    if not os.path.lexists(path):
        os.replace(new, path)
        return
    aside = aside_path(path)
    if os.path.lexists(aside):  # left by an earlier replace that completed: ``path`` is newer than it
        _remove(aside)
    os.replace(path, aside)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(aside, path)
        raise


def aside_path(path: str | Path) -> Path:
    """Where ``atomic_directory`` keeps the previous ``path`` between its two renames."""
    path = Path(path)
    return path.with_name(f".{path.name}{_ASIDE_SUFFIX}")


def recover_interrupted_replace(path: str | Path) -> bool:
    """Put the moved-aside copy of ``path`` back when a crash left ``path`` missing; ``True`` if it did.

    (``.<name>.old``, the aside name before ``.atomic.old``, is left alone: a person may use that name.)
    """
    path = Path(path)
    aside = aside_path(path)
    if os.path.lexists(path) or not aside.is_dir() or aside.is_symlink():
        return False
    os.replace(aside, path)
    logger.warning("%s: restored from %s (a replace of it was interrupted)", path, aside.name)
    return True


def clean_stale_temporaries(folder: str | Path, *, stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove what interrupted atomic writes left directly in ``folder``; returns the removed paths.

    Looks only at ``folder``'s own entries named as this module names them (nothing else is touched, no
    recursion into other folders). A temp goes when its writer was a process on this host that is no longer
    running, or (writer unknown) when nothing in it changed for ``stale_after_s``. A moved-aside copy goes
    when its original is in place; when the original is missing it is that original's only copy, and it is
    put back instead (``recover_interrupted_replace``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if not name.startswith(".") or entry.is_symlink():
            continue
        if name.endswith(_ASIDE_SUFFIX) and len(name) > 1 + len(_ASIDE_SUFFIX):
            original = folder / name[1 : -len(_ASIDE_SUFFIX)]
            if os.path.lexists(original):
                _remove(entry, missing_ok=True)
                removed.append(entry)
            else:
                recover_interrupted_replace(original)
        elif _is_stale_temp(entry, stale_after_s):
            _remove(entry, missing_ok=True)
            removed.append(entry)
    if removed:
        logger.warning(
            "%s: removed %d leftover(s) of interrupted writes: %s",
            folder,
            len(removed),
            ", ".join(path.name for path in removed),
        )
    return removed


def _is_stale_temp(entry: Path, stale_after_s: float) -> bool:
    match = _TEMP.match(entry.name)
    if match is None and _LEGACY_TEMP.match(entry.name) is None:
        return False
    if match is not None and match["host"] == _HOST:
        pid = int(match["pid"])
        if pid == os.getpid():
            return False
        if not _running(pid):
            return True
    return time.time() - _last_change(entry) > stale_after_s


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (``True`` when that cannot be told)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def _last_change(entry: Path) -> float:
    """The newest mtime of ``entry`` and (for a folder) its direct children: a write in progress moves it."""
    newest = entry.lstat().st_mtime
    if entry.is_dir():
        with os.scandir(entry) as children:
            for child in children:
                newest = max(newest, child.stat(follow_symlinks=False).st_mtime)
    return newest


def _remove(path: Path, *, missing_ok: bool = False) -> None:
    """Delete a file or a folder tree; ``missing_ok``: another remover may have taken (part of) it first."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        if not missing_ok:
            raise
        if path.is_dir() and not path.is_symlink():  # a child vanished under the walk: finish the rest
            shutil.rmtree(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # honours the umask, unlike mkstemp
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _host_label() -> str:
    label = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")[:32]
    return label or "host"


_HOST = _host_label()


def _temp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
