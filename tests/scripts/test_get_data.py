"""scripts/get_data.sh against a file:// mirror of zip archives built from the fixture files (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.experiments.test_glue_prepare import FILES as GLUE_FILES

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "experiments" / "fixtures"
# Official zip name -> the folder inside it, for GLUE's per-task archives.
GLUE_ZIPS = {
    "CoLA.zip": "CoLA", "SST-2.zip": "SST-2", "QQP-clean.zip": "QQP", "STS-B.zip": "STS-B", "MNLI.zip": "MNLI",
    "QNLIv2.zip": "QNLI", "RTE.zip": "RTE", "WNLI.zip": "WNLI",
}  # fmt: skip


def zip_tree(archive: Path, root: Path, folder: str) -> None:
    """Zip ``root/folder`` as the official archives do (members under ``folder/``, plus macOS metadata)."""
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(root).as_posix())
        zipped.writestr(f"__MACOSX/{folder}/._junk", b"\x00\x05\x16\x07")


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """Every official file name of the four benchmarks, in one folder."""
    site = tmp_path / "mirror"
    site.mkdir()
    for name, folder in GLUE_ZIPS.items():
        with zipfile.ZipFile(site / name, "w") as zipped:
            for path, text in GLUE_FILES.items():
                if path.startswith(f"{folder}/"):
                    zipped.writestr(path, text)
    (site / "AX.tsv").write_text(GLUE_FILES["diagnostic/diagnostic.tsv"], encoding="utf-8")
    for name in ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "mrpc_dev_ids.tsv"):
        (site / name).write_bytes((FIXTURES / "glue" / name).read_bytes())
    zip_tree(site / "snli_1.0.zip", FIXTURES / "snli", "snli_1.0")
    zip_tree(site / "SciTailV1.1.zip", FIXTURES / "scitail", "SciTailV1.1")
    zip_tree(site / "anli_v1.0.zip", FIXTURES / "anli", "anli_v1.0")
    return site


def get_data(tmp_path: Path, *benches: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "RAW_DIR": str(tmp_path / "raw"), "DATA_ROOT": str(tmp_path / "data"), **env}
    command = ["bash", str(REPO / "scripts" / "get_data.sh"), *benches]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_all_four_benchmarks_from_a_mirror(mirror: Path, tmp_path: Path) -> None:
    result = get_data(tmp_path, DATA_SOURCE=mirror.as_uri(), VERIFY_SHA256="0")
    assert result.returncode == 0, result.stdout + result.stderr
    data = tmp_path / "data"
    assert len(rows_of(data / "snli" / "snli_dev.jsonl")) == 2
    assert len(rows_of(data / "scitail" / "scitail_train.jsonl")) == 3
    assert len(rows_of(data / "anli" / "anli_train.jsonl")) == 4
    assert rows_of(data / "glue" / "ax_test.jsonl")[0]["hypothesis"] == "The cat did not sit on the mat."
    # MRPC built from the corpus files: the dev pair leaves train; test gets an index column.
    assert [row["uid"] for row in rows_of(data / "glue" / "mrpc_train.jsonl")] == [
        "mrpc-train-2",
        "mrpc-train-3",
    ]
    assert rows_of(data / "glue" / "mrpc_dev.jsonl") == [
        {
            "uid": "mrpc-dev-2",
            "premise": "Yucaipa owned Dominick 's before selling the chain in 1998 .",
            "hypothesis": "Yucaipa bought Dominick 's in 1995 and sold the chain in 1998 .",
            "label": "0",
        }
    ]
    assert [row["uid"] for row in rows_of(data / "glue" / "mrpc_test.jsonl")] == [
        "mrpc-test-0",
        "mrpc-test-1",
    ]
    assert not (tmp_path / "raw" / "__MACOSX").exists()
    assert "snli: 3 expected files present" in result.stdout
    assert "[get_data] done: glue snli scitail anli" in result.stdout


def test_a_published_checksum_that_does_not_match_fails_that_benchmark(mirror: Path, tmp_path: Path) -> None:
    result = get_data(tmp_path, "snli", "anli", DATA_SOURCE=mirror.as_uri())
    assert result.returncode == 1
    assert "error: snli: snli_1.0.zip from file://" in result.stderr
    assert (
        "is not the published afb3d70a5af5d8de0d9d81e2637e0fb8c22d1235c2749d83125ca43dab0dbd3e"
        in result.stderr
    )
    assert "[get_data] FAILED: snli (download/verify)" in result.stderr
    assert (
        len(rows_of(tmp_path / "data" / "anli" / "anli_dev.jsonl")) == 3
    )  # no checksum pinned: structure only


def test_a_missing_archive_names_the_benchmark_and_url(mirror: Path, tmp_path: Path) -> None:
    (mirror / "SciTailV1.1.zip").unlink()
    result = get_data(tmp_path, "scitail", SCITAIL_URL=(mirror / "SciTailV1.1.zip").as_uri())
    assert result.returncode == 1
    assert f"error: scitail: download of {(mirror / 'SciTailV1.1.zip').as_uri()} failed" in result.stderr
    assert "[get_data] FAILED: scitail (download/verify)" in result.stderr


def test_an_archive_without_the_expected_files_fails_the_structure_check(
    mirror: Path, tmp_path: Path
) -> None:
    with zipfile.ZipFile(mirror / "anli_v1.0.zip", "w") as zipped:
        zipped.writestr("anli_v1.0/R1/train.jsonl", "")
    result = get_data(tmp_path, "anli", ANLI_URL=(mirror / "anli_v1.0.zip").as_uri())
    assert result.returncode == 1
    assert "anli_v1.0/R1/dev.jsonl missing after unpacking (8 expected files missing" in result.stderr


def test_an_unknown_benchmark_stops_before_any_download(tmp_path: Path) -> None:
    result = get_data(tmp_path, "snli", "mnli")
    assert result.returncode == 2
    assert "error: unknown benchmark 'mnli' (glue, snli, scitail, anli)" in result.stderr
    assert not (tmp_path / "raw").exists()
