"""Raw text for ALUM continued pre-training (task ``demo_text``, mask_lm) from the demo suite's own files.

Usage (from the repo root, after ``experiments/demo/prepare.py``)::

    python experiments/demo/prepare_text.py --data_dir data/demo [--tasks banking77,vader_movie]
        [--max_train 2000] [--max_dev 300] [--seed 13]

Reads ``<data_dir>/<task>_train.jsonl`` and ``<task>_dev.jsonl`` of the demo tasks found there (default:
every demo task whose files exist) and writes ``<data_dir>/demo_text_train.jsonl`` (the premises of the
train splits) and ``demo_text_dev.jsonl`` (the premises of the dev splits, held-out text for the MLM
metrics) as ``{"uid", "premise"}`` rows. Duplicate sentences are written once; a sentence of a train split
never reappears in the dev text. ``--max_train`` / ``--max_dev`` keep a seeded sample. The task is defined in
``experiments/demo/alum_text_task_def.yml``; the recipe is in docs/alum_pretraining.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from experiments.canonical import read_utf8  # noqa: E402
from experiments.demo.prepare import READERS, write_jsonl  # noqa: E402

TASK = "demo_text"


def premises(path: Path) -> list[str]:
    """The premise of every row of a canonical JSONL file, in file order."""
    texts: list[str] = []
    try:
        lines = read_utf8(path).splitlines()
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror or error})") from None
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            premise = json.loads(line).get("premise")
        except (ValueError, AttributeError):
            raise UserError(f"{path}:{line_no}: not a JSON object") from None
        if not isinstance(premise, str) or not premise.strip():
            raise UserError(f"{path}:{line_no}: field 'premise': missing or empty")
        texts.append(" ".join(premise.split()))
    return texts


def unique(texts: Sequence[str], exclude: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    seen = set(exclude)
    kept = []
    for text in texts:
        if text not in seen:
            seen.add(text)
            kept.append(text)
    return kept


def sample(texts: list[str], limit: int | None, seed: int, split: str) -> list[str]:
    if limit is None or len(texts) <= limit:
        return texts
    keep = sorted(random.Random(f"{seed}:{TASK}:{split}").sample(range(len(texts)), limit))
    return [texts[i] for i in keep]


def build_text(
    data_dir: Path, tasks: Sequence[str], max_train: int | None, max_dev: int | None, seed: int
) -> dict[str, list[str]]:
    """``{"train": sentences, "dev": sentences}`` from the tasks' train and dev premises."""
    by_split: dict[str, list[str]] = {"train": [], "dev": []}
    for task in tasks:
        for split in by_split:
            path = data_dir / f"{task}_{split}.jsonl"
            if not path.is_file():
                raise UserError(f"{path}: missing (run experiments/demo/prepare.py --tasks {task} first)")
            by_split[split] += premises(path)
    train = sample(unique(by_split["train"]), max_train, seed, "train")
    dev = sample(unique(by_split["dev"], exclude=set(by_split["train"])), max_dev, seed, "dev")
    return {"train": train, "dev": dev}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write the demo_text mask_lm task from the demo suite's text."
    )
    parser.add_argument(
        "--data_dir", type=Path, required=True, help="where the demo <task>_<split>.jsonl are"
    )
    parser.add_argument("--tasks", default=None, help="comma-separated demo tasks (default: those present)")
    parser.add_argument(
        "--max_train", type=int, default=None, help="keep a seeded sample of N train sentences"
    )
    parser.add_argument("--max_dev", type=int, default=300, help="keep a seeded sample of N dev sentences")
    parser.add_argument("--seed", type=int, default=13)
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.tasks:
        tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    else:
        tasks = [task for task in READERS if (args.data_dir / f"{task}_train.jsonl").is_file()]
    if not tasks:
        raise UserError(f"{args.data_dir}: no demo task files (run experiments/demo/prepare.py first)")
    text = build_text(args.data_dir, tasks, args.max_train, args.max_dev, args.seed)
    for split, sentences in text.items():
        rows = [{"uid": f"{TASK}-{split}-{i:06d}", "premise": s} for i, s in enumerate(sentences)]
        write_jsonl(args.data_dir / f"{TASK}_{split}.jsonl", rows)
    print(f"{TASK}: {len(text['train'])} train / {len(text['dev'])} dev sentences from {', '.join(tasks)}")


if __name__ == "__main__":
    main()
