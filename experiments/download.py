"""Download, verify and unpack the official benchmark archives (used by ``scripts/get_data.sh``).

    python experiments/download.py snli --raw_dir data/raw [--base_url URL | --url URL] [--no_verify_sha256]

Each file is fetched (``https://`` or ``file://``) into ``<raw_dir>/downloads/``, checked against its
SHA-256 where a published one is known (TFDS's recorded checksums for the SNLI zip and the MSR Paraphrase
files; none is pinned for the others), unpacked into ``<raw_dir>``, and the unpacked tree is checked to hold
the files the benchmark's ``prepare.py`` reads. ``--base_url`` fetches every file of the benchmark from
``<base_url>/<file name>`` (a mirror); ``--url`` replaces the one archive's URL. Any failure is one line
naming the benchmark, the file and what went wrong.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from experiments.glue.mrpc import build_mrpc  # noqa: E402


class Bench(StrEnum):
    GLUE = "glue"
    SNLI = "snli"
    SCITAIL = "scitail"
    ANLI = "anli"


@dataclass(frozen=True)
class Source:
    """One official file: its URL, its published SHA-256 (or None), and where it goes under the raw folder
    (a zip is unpacked into that folder; any other file is copied to that path)."""

    url: str
    target: str
    sha256: str | None = None

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[1]


GLUE_BASE = "https://dl.fbaipublicfiles.com/glue/data"
SENTEVAL_BASE = "https://dl.fbaipublicfiles.com/senteval/senteval_data"
GLUE_ZIPS = ("CoLA", "SST-2", "QQP-clean", "STS-B", "MNLI", "QNLIv2", "RTE", "WNLI")

SOURCES: dict[Bench, tuple[Source, ...]] = {
    Bench.GLUE: (
        *(Source(f"{GLUE_BASE}/{name}.zip", "glue_data") for name in GLUE_ZIPS),
        Source(f"{GLUE_BASE}/AX.tsv", "glue_data/diagnostic/diagnostic.tsv"),
        # SHA-256s as recorded in tensorflow/datasets' url_checksums/glue.txt for these URLs.
        Source(
            f"{SENTEVAL_BASE}/msr_paraphrase_train.txt",
            "glue_data/MRPC/msr_paraphrase_train.txt",
            "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89",
        ),
        Source(
            f"{SENTEVAL_BASE}/msr_paraphrase_test.txt",
            "glue_data/MRPC/msr_paraphrase_test.txt",
            "a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784",
        ),
        Source(f"{GLUE_BASE}/mrpc_dev_ids.tsv", "glue_data/MRPC/mrpc_dev_ids.tsv"),
    ),
    Bench.SNLI: (
        # tensorflow/datasets' url_checksums/snli.txt.
        Source(
            "https://nlp.stanford.edu/projects/snli/snli_1.0.zip",
            ".",
            "afb3d70a5af5d8de0d9d81e2637e0fb8c22d1235c2749d83125ca43dab0dbd3e",
        ),
    ),
    Bench.SCITAIL: (Source("https://ai2-public-datasets.s3.amazonaws.com/scitail/SciTailV1.1.zip", "."),),
    Bench.ANLI: (Source("https://dl.fbaipublicfiles.com/anli/anli_v1.0.zip", "."),),
}

_GLUE_SPLITS = ("train.tsv", "dev.tsv", "test.tsv")
# What each benchmark's prepare.py reads, relative to the raw folder: the structure check after unpacking.
EXPECTED: dict[Bench, tuple[str, ...]] = {
    Bench.GLUE: (
        *(
            f"glue_data/{task}/{split}"
            for task in ("CoLA", "SST-2", "QQP", "STS-B", "QNLI", "RTE", "WNLI")
            for split in _GLUE_SPLITS
        ),
        *(
            f"glue_data/MNLI/{name}.tsv"
            for name in ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")
        ),
        "glue_data/diagnostic/diagnostic.tsv",
    ),  # fmt: skip
    Bench.SNLI: tuple(f"snli_1.0/snli_1.0_{split}.jsonl" for split in ("train", "dev", "test")),
    Bench.SCITAIL: tuple(
        f"SciTailV1.1/tsv_format/scitail_1.0_{split}.tsv" for split in ("train", "dev", "test")
    ),
    Bench.ANLI: tuple(
        f"anli_v1.0/R{n}/{split}.jsonl" for n in (1, 2, 3) for split in ("train", "dev", "test")
    ),
}
# Where each benchmark's prepare.py finds its folder, relative to the raw folder.
PREPARE_DIR: dict[Bench, str] = {
    Bench.GLUE: "glue_data",
    Bench.SNLI: "snli_1.0",
    Bench.SCITAIL: "SciTailV1.1",
    Bench.ANLI: "anli_v1.0",
}


def resolve_url(source: Source, base_url: str | None, url: str | None) -> str:
    if url:
        return url
    return f"{base_url.rstrip('/')}/{source.name}" if base_url else source.url


def fetch(bench: Bench, url: str, destination: Path) -> str:
    """Stream ``url`` to ``destination`` (atomically); returns its SHA-256."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as handle:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                handle.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        raise UserError(f"{bench}: download of {url} failed: {reason}") from None
    os.replace(partial, destination)
    return digest.hexdigest()


def unpack(bench: Bench, archive: Path, folder: Path) -> None:
    """Extract a zip into ``folder``, leaving out macOS metadata; member names may not leave the folder."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.infolist():
                parts = Path(member.filename).parts
                if not parts or parts[0] == "__MACOSX":
                    continue
                if member.filename.startswith("/") or ".." in parts:
                    raise UserError(f"{bench}: {archive.name}: unsafe member name {member.filename!r}")
                zipped.extract(member, folder)
    except zipfile.BadZipFile as error:
        raise UserError(f"{bench}: {archive.name} is not a zip archive ({error})") from None


def get(
    bench: Bench,
    raw_dir: Path,
    base_url: str | None = None,
    url: str | None = None,
    verify_sha256: bool = True,
) -> Path:
    """Download, verify and unpack ``bench`` into ``raw_dir``; returns the folder its prepare.py reads."""
    sources = SOURCES[bench]
    if url and len(sources) > 1:
        raise UserError(
            f"{bench}: --url replaces a single archive; {bench} has {len(sources)} files (use --base_url)"
        )
    for source in sources:
        location = resolve_url(source, base_url, url)
        downloaded = raw_dir / "downloads" / source.name
        print(f"{bench}: fetching {location}")
        sha256 = fetch(bench, location, downloaded)
        if verify_sha256 and source.sha256 is not None and sha256 != source.sha256:
            problem = f"SHA-256 {sha256} is not the published {source.sha256}"
            raise UserError(f"{bench}: {source.name} from {location}: {problem}")
        target = raw_dir / source.target
        if source.name.endswith(".zip"):
            unpack(bench, downloaded, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(downloaded, target)
    if bench is Bench.GLUE:
        counts = build_mrpc(raw_dir / "glue_data" / "MRPC")
        print(f"glue: MRPC built from the MSR Paraphrase Corpus: {counts}")
    missing = [name for name in EXPECTED[bench] if not (raw_dir / name).is_file()]
    if missing:
        raise UserError(
            f"{bench}: {raw_dir / missing[0]} missing after unpacking "
            f"({len(missing)} expected files missing; not the official archive?)"
        )
    print(f"{bench}: {len(EXPECTED[bench])} expected files present under {raw_dir}")
    return raw_dir / PREPARE_DIR[bench]


@exit_on_user_error
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Download, verify and unpack a benchmark's official files.")
    parser.add_argument("bench", type=Bench, choices=list(Bench))
    parser.add_argument("--raw_dir", default="data/raw")
    parser.add_argument("--base_url", help="fetch every file from <base_url>/<file name> instead")
    parser.add_argument(
        "--url", help="the archive's URL instead of the official one (single-archive benchmarks)"
    )
    parser.add_argument(
        "--no_verify_sha256", action="store_true", help="skip the published checksums (a re-packed mirror)"
    )
    args = parser.parse_args(argv)
    return get(args.bench, Path(args.raw_dir), args.base_url, args.url, not args.no_verify_sha256)


if __name__ == "__main__":
    main()
