"""Write a GLUE submission folder from one multi-task checkpoint: the official file names, one per test set.

    python experiments/glue/submission.py --checkpoint out/glue/best --data_dir data/glue \
        --output_dir submission
    python experiments/glue/submission.py --checkpoint out/glue/mtl/best --checkpoint out/glue/rte/best ...

For every GLUE test set whose task head is in a checkpoint (the last ``--checkpoint`` given that has it: a
per-task fine-tuned checkpoint after the multi-task one overrides it for its task) it runs ``predict.py`` on
``<data_dir>/<task>_<split>.jsonl`` (written by ``experiments/glue/prepare.py``) and writes ``<NAME>.tsv``
(``index<TAB>prediction``, the official label strings) plus the predictions JSONL under ``predictions/``.
AX, the diagnostic set, is predicted with the mnli head. Zip the folder's .tsv files and upload them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import predict  # noqa: E402
from data_utils.errors import UserError, exit_on_user_error  # noqa: E402
from mt_dnn.model import read_checkpoint_config  # noqa: E402

# (official file name, the head that predicts it, our task whose data it is, our split name)
SUBMISSION_FILES: tuple[tuple[str, str, str, str], ...] = (
    ("CoLA", "cola", "cola", "test"),
    ("SST-2", "sst", "sst", "test"),
    ("MRPC", "mrpc", "mrpc", "test"),
    ("STS-B", "stsb", "stsb", "test"),
    ("QQP", "qqp", "qqp", "test"),
    ("MNLI-m", "mnli", "mnli", "matched_test"),
    ("MNLI-mm", "mnli", "mnli", "mismatched_test"),
    ("QNLI", "qnli", "qnli", "test"),
    ("RTE", "rte", "rte", "test"),
    ("WNLI", "wnli", "wnli", "test"),
    ("AX", "mnli", "ax", "test"),
)


@exit_on_user_error
def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="GLUE submission files from a checkpoint.")
    parser.add_argument(
        "--checkpoint", required=True, action="append", help="repeatable; later ones win for their heads"
    )
    parser.add_argument("--data_dir", required=True, help="canonical JSONL from experiments/glue/prepare.py")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    owner: dict[str, str] = {}  # head -> the checkpoint that predicts it
    for checkpoint in args.checkpoint:
        owner.update(dict.fromkeys(read_checkpoint_config(checkpoint)["task_defs"], checkpoint))
    heads = set(owner)
    out = Path(args.output_dir)
    written: list[Path] = []
    for name, head, task, split in SUBMISSION_FILES:
        source = Path(args.data_dir) / f"{task}_{split}.jsonl"
        if head not in heads or not source.is_file():
            reason = f"no {head} head in the checkpoints" if head not in heads else f"no {source}"
            print(f"{name}.tsv: skipped ({reason})")
            continue
        target = out / f"{name}.tsv"
        print(f"{name}.tsv: {head} head of {owner[head]}")
        predict.main([
            "--checkpoint", owner[head], "--task", head, "--input", str(source),
            "--output", str(out / "predictions" / f"{name}.predictions.jsonl"), "--submission", str(target),
            "--batch_size", str(args.batch_size), "--device", args.device,
        ])  # fmt: skip
        written.append(target)
    if not written:
        where = ", ".join(args.checkpoint)
        raise UserError(f"{where}: no GLUE test set could be predicted (heads: {', '.join(sorted(heads))})")
    print(f"{len(written)} submission files in {out}")
    return written


if __name__ == "__main__":
    main()
