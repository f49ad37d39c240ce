"""Disfl-QA from the BIG-bench sdist (PyPI) -> extractive-QA JSONL for a ``span`` task.

Usage (from the repo root)::

    python experiments/demo/disfl_qa.py --output_dir data/demo [--cache_dir DIR] [--seed 13] [--max_train N]

Disfl-QA (Gupta et al., 2021) asks SQuAD v2 questions rewritten with human-written disfluencies ("What do
petrologists use rock samples or rather electron microprobes ... for?") over SQuAD's Wikipedia paragraphs.
BIG-bench ships its 8,000 examples as ``{"input": "<question> \\ncontext: <paragraph>", "target":
"<answer>"}``, the paragraph space-tokenised (``Earth ' s``) and the answer as SQuAD wrote it (``40,000``),
``unknown`` for a question without an answer. BIG-bench keeps no character offsets, so each answer is
placed at its first occurrence in the paragraph, compared without whitespace when the literal text is not
there (``40,000`` -> ``40 , 000``), and the gold text written is the paragraph's own characters there: an
answer that occurs more than once may sit at another place than SQuAD's. Answers found nowhere and examples
without a question (one in the release) are reported and skipped.

Splits are seeded 80/10/10 by paragraph (no paragraph in two splits), written as
``<output_dir>/disfl_qa_<split>.jsonl`` in the flat form ``data_utils.readers_squad`` reads: ``{"id",
"question", "context", "answers": {"text": [...], "answer_start": [...]}}``, empty lists for no answer.
Not in ``prepare.py``'s default suite; ``demo_task_def.yml``'s ``disfl_qa`` entry (a ``span`` task) reads it.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from experiments.demo.fetch import SourceCache, default_cache_dir  # noqa: E402
from experiments.demo.prepare import SPLITS, positive_int, split_examples, subsample, write_jsonl  # noqa: E402
from experiments.demo.readers import bigbench_task_examples, clean, group_key  # noqa: E402

TASK = "disfl_qa"
CONTEXT_MARKER = "\ncontext: "
NO_ANSWER = "unknown"


@dataclass(frozen=True)
class QAExample:
    """One question with its answer's characters in the context (``None``: no answer)."""

    question: str
    context: str
    answer: tuple[int, int] | None
    group: str
    split: str | None = None


def find_answer(context: str, answer: str) -> tuple[int, int] | None:
    """The first occurrence of ``answer`` in ``context``, literally or else ignoring whitespace."""
    start = context.find(answer)
    if start >= 0:
        return start, start + len(answer)
    kept = [i for i, char in enumerate(context) if not char.isspace()]
    squeezed = "".join(context[i] for i in kept)
    wanted = "".join(answer.split())
    at = squeezed.find(wanted) if wanted else -1
    if at < 0:
        return None
    return kept[at], kept[at + len(wanted) - 1] + 1


def parse_examples(examples: list[Any], where: str) -> tuple[list[QAExample], Counter[str]]:
    """BIG-bench's disfl_qa examples -> QA examples; unusable ones are reported, counted and skipped."""
    rows: list[QAExample] = []
    skipped: Counter[str] = Counter()
    for index, example in enumerate(examples):
        at = f"{where}: examples[{index}]"
        text, target = (example.get("input"), example.get("target")) if isinstance(example, dict) else (0, 0)
        if not isinstance(text, str) or text.count(CONTEXT_MARKER) != 1:
            raise UserError(f"{at}: key 'input': expected '<question>{CONTEXT_MARKER.strip()} <paragraph>'")
        if not isinstance(target, str) or not target.strip():
            raise UserError(f"{at}: key 'target': expected the answer text or '{NO_ANSWER}'")
        question, context = (clean(part) for part in text.split(CONTEXT_MARKER))
        answer = None if target.strip() == NO_ANSWER else find_answer(context, clean(target))
        problem = None
        if not question or not context:
            problem = "an empty question or paragraph"
        elif answer is None and target.strip() != NO_ANSWER:
            problem = "an answer not in its paragraph"
        if problem is not None:
            skipped[problem] += 1
            print(f"warning: {TASK}: {at}: {problem} (target {target!r}); skipped", file=sys.stderr)
            continue
        rows.append(QAExample(question, context, answer, group=group_key(context)))
    return rows, skipped


def to_rows(split: str, examples: Sequence[QAExample]) -> list[dict[str, Any]]:
    """Flat JSONL rows with ids ``disfl_qa-<split>-<6-digit index>``."""
    rows = []
    for index, example in enumerate(examples):
        texts, starts = [], []
        if example.answer is not None:
            start, end = example.answer
            texts, starts = [example.context[start:end]], [start]
        rows.append(
            {
                "id": f"{TASK}-{split}-{index:06d}",
                "question": example.question,
                "context": example.context,
                "answers": {"text": texts, "answer_start": starts},
            }
        )
    return rows


def prepare(cache: SourceCache, output_dir: Path, seed: int, max_train: int | None) -> str:
    """Read, split, subsample and write; returns the summary line."""
    items, where = bigbench_task_examples(cache, TASK)
    examples, skipped = parse_examples(items, where)
    splits = {split: to_rows(split, rows) for split, rows in split_examples(examples, seed, TASK).items()}
    full_train = len(splits["train"])
    splits["train"] = subsample(splits["train"], max_train, seed, TASK)
    changed = [write_jsonl(output_dir / f"{TASK}_{split}.jsonl", rows) for split, rows in splits.items()]
    sizes = ", ".join(f"{split} {len(splits[split])}" for split in SPLITS)
    if len(splits["train"]) < full_train:
        sizes += f" (train of {full_train})"
    no_answer = sum(not row["answers"]["text"] for row in splits["train"]) / max(len(splits["train"]), 1)
    contexts = len({example.group for example in examples})
    return (
        f"{TASK}: {sizes}; {contexts} paragraphs; {no_answer:.1%} of train without an answer; "
        f"skipped {_counts(skipped)}; files {'written' if any(changed) else 'unchanged'}"
    )


def _counts(skipped: Counter[str]) -> str:
    reasons = ", ".join(f"{count} with {reason}" for reason, count in sorted(skipped.items()))
    return f"{sum(skipped.values())}" + (f" ({reasons})" if reasons else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write Disfl-QA (BIG-bench sdist) as extractive-QA JSONL.")
    parser.add_argument("--output_dir", type=Path, required=True, help="where disfl_qa_<split>.jsonl go")
    parser.add_argument("--cache_dir", type=Path, default=None, help="archive cache (as prepare.py)")
    parser.add_argument("--max_train", type=positive_int, default=None, help="subsample train to N (seeded)")
    parser.add_argument("--seed", type=int, default=13, help="seed for splits and subsampling (default 13)")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cache = SourceCache((args.cache_dir or default_cache_dir()).expanduser())
    print(prepare(cache, args.output_dir, args.seed, args.max_train), flush=True)


if __name__ == "__main__":
    main()
