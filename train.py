"""Multi-task training: ``python train.py --task_def T.yml --data_dir CACHE --init_checkpoint MODEL
--train_datasets a,b [--test_datasets a] [--config run.yml] ...`` (see ``--help``)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import transformers

from data_utils.errors import exit_on_user_error
from mt_dnn.distributed import setup, teardown
from mt_dnn.flags import parse_config
from mt_dnn.trainer import Trainer


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    config = parse_config(argv)
    # transformers' own load/save progress bars and notes would interleave with ours on every checkpoint.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    context = setup(config.device)  # one process, or one rank of torchrun's world
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if context.is_main:
        handlers.append(logging.FileHandler(Path(config.output_dir) / "train.log"))
    logging.basicConfig(
        level=logging.INFO if context.is_main else logging.WARNING,
        format=f"%(asctime)s %(levelname)s {f'[rank {context.rank}] ' if context.enabled else ''}%(message)s",
        handlers=handlers,
        force=True,
    )
    try:
        results = Trainer(config, context).train()
    finally:
        teardown(context)
    if not context.is_main:
        return results
    print(
        json.dumps(
            {
                "best_metric": results["best_metric"],
                "best_score": results["best_score"],
                "final_eval": results["final_eval"],
            },
            indent=2,
        )
    )
    return results


if __name__ == "__main__":
    main()
