"""Multi-task training: ``python train.py --task_def T.yml --data_dir CACHE --init_checkpoint MODEL
--train_datasets a,b [--test_datasets a] [--config run.yml] ...`` (see ``--help``)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import transformers

from data_utils.errors import exit_on_user_error
from mt_dnn.config import parse_config
from mt_dnn.trainer import Trainer


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    config = parse_config(argv)
    # transformers' own load/save progress bars and notes would interleave with ours on every checkpoint.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[
            logging.StreamHandler(sys.stderr),
            logging.FileHandler(Path(config.output_dir) / "train.log"),
        ],
        force=True,
    )
    results = Trainer(config).train()
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
