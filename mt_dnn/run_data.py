"""What a run reads from the token-id cache, for training (train.py) and prediction (predict.py) alike.

``load_run_data``: the task definitions, the train splits and every labelled dev/test split of a cache;
``CacheCheck``: that a cache (or one split folder) was made with this tokenizer and fits this encoder;
``collator_for`` / ``masking_for``: how batches of those tasks are padded and masked; ``train_loader``: the
sampler and loader of the training rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from data_utils.cache import EncodedSplit, load_split, split_dir, verify_cache, verify_split
from data_utils.dataset import Collator, MultiTaskDataset, TaskDataset
from data_utils.errors import UserError
from data_utils.masking import MaskingSpec
from data_utils.prepro import tokenizer_fingerprint
from data_utils.sampler import MultiTaskBatchSampler
from data_utils.task_def import TaskDef
from mt_dnn.config import TrainConfig
from mt_dnn.model import usable_positions
from mt_dnn.tasks import load_task_defs, task_kind

__all__ = [
    "CacheCheck",
    "RunData",
    "collator_for",
    "load_run_data",
    "masking_for",
    "train_loader",
]

logger = logging.getLogger("mt_dnn.trainer")  # its warnings are the training run's


@dataclass
class RunData:
    task_defs: dict[str, TaskDef]
    train: MultiTaskDataset
    evals: dict[tuple[str, str], TaskDataset]  # labelled dev splits: evaluated during training
    tests: dict[tuple[str, str], TaskDataset]  # labelled test splits: evaluated once, with the best model
    collator: Collator
    masking: MaskingSpec | None = None  # the tokenizer's mask token etc., when a task is mask_lm


def collator_for(task_defs: Mapping[str, TaskDef], tokenizer: PreTrainedTokenizerBase) -> Collator:
    return Collator(task_defs, pad_token_id=int(tokenizer.pad_token_id or 0))


def masking_for(task_defs: Mapping[str, TaskDef], tokenizer: PreTrainedTokenizerBase) -> MaskingSpec | None:
    """The tokenizer's mask token etc. when a task's kind masks its batches (mask_lm); ``None`` otherwise."""
    if any(task_kind(task).needs_masking for task in task_defs.values()):
        return MaskingSpec.from_tokenizer(tokenizer)
    return None


def load_run_data(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> RunData:
    """Task definitions, the train splits and every labelled dev/test split found in the token-id cache."""
    all_defs = load_task_defs(config.task_def, default_dropout_p=config.dropout_p)
    eval_tasks = config.test_datasets or config.train_datasets
    for name in [*config.train_datasets, *eval_tasks]:
        if name not in all_defs:
            raise UserError(
                f"{config.task_def}: task '{name}' is not defined (defined: {', '.join(all_defs)})"
            )
    task_defs = {name: all_defs[name] for name in dict.fromkeys([*config.train_datasets, *eval_tasks])}

    train = MultiTaskDataset(
        {
            name: _task_dataset(config.data_dir, task_defs[name], task_defs[name].train_split)
            for name in config.train_datasets
        }
    )
    evals: dict[tuple[str, str], TaskDataset] = {}
    tests: dict[tuple[str, str], TaskDataset] = {}
    for name in eval_tasks:
        for split in task_defs[name].eval_splits:
            if _is_cached(config.data_dir, name, split):
                dataset = _task_dataset(config.data_dir, task_defs[name], split)
                # A self-labelled kind's text is its own label (mask_lm): every split of it can be scored.
                self_labelled = task_kind(task_defs[name]).self_labelled
                if (dataset.split.has_labels or self_labelled) and len(dataset):
                    (tests if split in task_defs[name].test_splits else evals)[(name, split)] = dataset
    _check_evaluated(config, task_defs, evals, tests)
    return RunData(
        task_defs=task_defs,
        train=train,
        evals=evals,
        tests=tests,
        collator=collator_for(task_defs, tokenizer),
        masking=masking_for(task_defs, tokenizer),
    )


def _check_evaluated(
    config: TrainConfig,
    task_defs: Mapping[str, TaskDef],
    evals: Mapping[tuple[str, str], TaskDataset],
    tests: Mapping[tuple[str, str], TaskDataset],
) -> None:
    """A task named in --test_datasets must have something to evaluate; a task without a labelled dev split
    cannot pick the best checkpoint, which is said rather than left to an empty best/."""
    for name in config.test_datasets or config.train_datasets:
        has_dev = any(task == name for task, _ in evals)
        has_test = any(task == name for task, _ in tests)
        looked = ", ".join(task_defs[name].eval_splits) or "none"
        if config.test_datasets and not has_dev and not has_test:
            raise UserError(
                f"{config.data_dir}: --test_datasets task '{name}' has no labelled dev or test split in the "
                f"cache (its eval splits: {looked}); run prepro_std.py on them, or drop it from the flag"
            )
        if not has_dev:
            logger.warning(
                "task '%s' has no labelled dev split in %s (eval splits: %s): it cannot choose the best "
                "checkpoint%s",
                name,
                config.data_dir,
                looked,
                "" if any(evals) else "; no split is evaluated during training, so best/ is not written",
            )


def _is_cached(data_dir: str, task: str, split: str) -> bool:
    return (split_dir(data_dir, task, split) / "meta.json").is_file()


def _task_dataset(data_dir: str, task_def: TaskDef, split: str) -> TaskDataset:
    if not _is_cached(data_dir, task_def.name, split):
        raise UserError(
            f"{split_dir(data_dir, task_def.name, split)}: no token-id cache for task '{task_def.name}' "
            f"split '{split}' (run prepro_std.py)"
        )
    return TaskDataset(task_def, load_split(split_dir(data_dir, task_def.name, split)))


@dataclass(frozen=True)
class CacheCheck:
    """What a cache must fit: the tokenizer it was made with and the encoder's id and length limits."""

    tokenizer_sha256: str
    vocab_size: int | None
    max_positions: int | None
    type_vocab_size: int | None

    @classmethod
    def for_encoder(cls, tokenizer: PreTrainedTokenizerBase, encoder_config: Any) -> CacheCheck:
        """From a loaded encoder's ``PretrainedConfig`` (training)."""
        return cls(
            tokenizer_sha256=tokenizer_fingerprint(tokenizer)["sha256"],
            vocab_size=getattr(encoder_config, "vocab_size", None),
            max_positions=usable_positions(encoder_config.to_dict()),
            type_vocab_size=getattr(encoder_config, "type_vocab_size", None),
        )

    @classmethod
    def for_config_json(cls, tokenizer: PreTrainedTokenizerBase, config: Mapping[str, Any]) -> CacheCheck:
        """From an encoder's ``config.json`` as read from disk (prediction, before loading weights)."""
        limit = usable_positions(config)
        return cls(
            tokenizer_sha256=tokenizer_fingerprint(tokenizer)["sha256"],
            vocab_size=config.get("vocab_size"),
            max_positions=limit if isinstance(limit, int) and limit > 0 else None,
            type_vocab_size=config.get("type_vocab_size"),
        )

    def cache(self, data_dir: str | Path, task_defs: Mapping[str, TaskDef]) -> None:
        """Every split of ``task_defs`` in the cache folder ``data_dir`` (``verify_cache``)."""
        verify_cache(data_dir, task_defs, **self._limits())

    def split(self, path: Path, task_def: TaskDef) -> EncodedSplit:
        """One split folder, which must hold ``task_def``'s task (``verify_split``); returned loaded."""
        cached_task = load_split(path).meta.get("task")
        if cached_task != task_def.name:
            raise UserError(f"{path}: holds a token-id cache of task '{cached_task}', not '{task_def.name}'")
        return verify_split(path, task_def, **self._limits())

    def _limits(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "max_positions": self.max_positions,
            "type_vocab_size": self.type_vocab_size,
            "tokenizer_sha256": self.tokenizer_sha256,
        }


def train_loader(
    config: TrainConfig,
    train: MultiTaskDataset,
    collator: Collator,
    device: torch.device,
    *,
    rank: int,
    world_size: int,
) -> tuple[MultiTaskBatchSampler, DataLoader]:
    """The seeded multi-task sampler of the training rows (this rank's slice of every global batch) and its
    loader."""
    sampler = config.sampling.build(
        train.task_sizes,
        config.batch_size,
        seed=config.seed,
        rank=rank,
        world_size=world_size,
        lengths=train.lengths,
    )
    loader = DataLoader(
        train,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        # Its own generator: creating an iterator must not draw from the global RNG (dropout's).
        generator=torch.Generator().manual_seed(config.seed),
    )
    return sampler, loader
