"""An opt-in sequence-labeling demo task: BIG-bench's polish_sequence_labeling -> CoNLL files.

    python experiments/demo/polish_ner.py --output_dir data/demo [--max_train 2000] [--seed 0]

The source is the bigbench==1.0.0 sdist the other BIG-bench demo tasks come from (``pip download
--no-deps`` into the source cache; nothing is installed): 12,856 Polish sentences (2 empty ones are left
out), one tag per whitespace token for named entities (``nam_*``), temporal expressions (``t3_*``) and events
(``action``, ``state``, ...), ``O`` otherwise. The tags are IO (a type per token, no span starts): a run of
one type becomes one span, written as BIO (``B-<type>`` then ``I-<type>``), so two adjacent entities of one
type merge into one (an approximation the source format forces). Splits are seeded 80/10/10 by sentence
text (a duplicated sentence stays in one split); ``--max_train`` keeps a seeded subsample of train. Writes
``polish_ner_<split>.conll`` (word and tag per line, a blank line between sentences); ``demo_task_def.yml``'s
``polish_ner`` entry lists the tags. Not in ``prepare.py``'s task list: run it yourself.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_utils.atomic import atomic_write_text  # noqa: E402
from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from experiments.demo.fetch import SourceCache, default_cache_dir  # noqa: E402
from experiments.demo.prepare import SPLITS, split_examples  # noqa: E402
from experiments.demo.readers import Example, bigbench_task_examples, group_key  # noqa: E402

TASK = "polish_ner"
SOURCE_TASK = "polish_sequence_labeling"
OUTSIDE = "O"


def io_to_bio(tags: Sequence[str]) -> list[str]:
    """IO tags (a type per token) -> BIO: a run of one type starts with ``B-``, the rest are ``I-``."""
    out: list[str] = []
    previous = OUTSIDE
    for tag in tags:
        if tag == OUTSIDE:
            out.append(OUTSIDE)
        else:
            out.append(f"{'I' if tag == previous else 'B'}-{tag}")
        previous = tag
    return out


def read_sentences(cache: SourceCache) -> tuple[list[Example], int]:
    """The source's sentences as examples (``premise`` the words, space-joined; ``label`` their BIO tags) and
    how many empty ones were left out."""
    examples, where = bigbench_task_examples(cache, SOURCE_TASK)
    out: list[Example] = []
    empty = 0
    for index, example in enumerate(examples):
        if not isinstance(example, dict):
            raise UserError(f"{where}: examples[{index}]: expected an object")
        for key in ("input", "target"):
            if not isinstance(example.get(key), str):
                raise UserError(f"{where}: examples[{index}]: missing key '{key}'")
        words, tags = example["input"].split(), example["target"].split()
        if not words and not tags:
            empty += 1
            continue
        if len(words) != len(tags):
            raise UserError(
                f"{where}: examples[{index}]: {len(words)} tokens but {len(tags)} tags in key 'target'"
            )
        out.append(Example(" ".join(words), " ".join(io_to_bio(tags)), group=group_key(example["input"])))
    return out, empty


def conll_text(examples: Sequence[Example]) -> str:
    blocks = [
        "\n".join(f"{word} {tag}" for word, tag in zip(e.premise.split(), str(e.label).split(), strict=True))
        for e in examples
    ]
    return "\n\n".join(blocks) + "\n"


def prepare(
    cache: SourceCache, output_dir: Path, *, seed: int = 0, max_train: int | None = None
) -> dict[str, int]:
    """Write ``polish_ner_<split>.conll`` into ``output_dir``; returns the sentences per split and the empty
    source sentences left out (``empty``)."""
    examples, empty = read_sentences(cache)
    splits = split_examples(examples, seed, TASK)
    if max_train is not None and len(splits["train"]) > max_train:
        keep = sorted(
            random.Random(f"{seed}:{TASK}:max_train").sample(range(len(splits["train"])), max_train)
        )
        splits["train"] = [splits["train"][i] for i in keep]
    output_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        atomic_write_text(output_dir / f"{TASK}_{split}.conll", conll_text(splits[split]))
    return {**{split: len(splits[split]) for split in SPLITS}, "empty": empty}


def positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_train", type=positive_int, default=None, help="seeded subsample of train")
    parser.add_argument("--cache_dir", type=Path, default=None, help="source cache (default: the demo's)")
    args = parser.parse_args(argv)
    counts = prepare(SourceCache(args.cache_dir or default_cache_dir()), args.output_dir, seed=args.seed,
                     max_train=args.max_train)  # fmt: skip
    print(f"{TASK}: " + "  ".join(f"{split} {n}" for split, n in counts.items()) + f"  -> {args.output_dir}")


if __name__ == "__main__":
    main()
