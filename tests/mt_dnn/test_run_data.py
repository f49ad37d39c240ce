"""Run data shared by train.py and predict.py: one cache check, one device resolution, the same errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, BertTokenizerFast

import predict
from data_utils.cache import split_dir
from data_utils.errors import UserError
from mt_dnn.distributed import resolve_device
from mt_dnn.run_data import CacheCheck
from mt_dnn.trainer import Trainer
from tests.conftest import TINY_VOCAB
from tests.mt_dnn.conftest import save_tiny_checkpoint, tiny_task_defs
from tests.mt_dnn.test_trainer import config_for

TOKENIZER_KEY = ": key 'tokenizer': "


def other_tokenizer() -> BertTokenizerFast:
    """The tiny vocabulary with its last two words swapped: the same size, other ids."""
    vocab = [*TINY_VOCAB[:-2], TINY_VOCAB[-1], TINY_VOCAB[-2]]
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, model_max_length=512)


def test_train_and_predict_refuse_a_cache_of_another_tokenizer_alike(
    tiny_run: dict, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_run["init_checkpoint"], encoder)
    other_tokenizer().save_pretrained(str(encoder))
    with pytest.raises(UserError) as refused:
        Trainer(config_for(tiny_run, tmp_path / "out", init_checkpoint=str(encoder)))
    train_error = str(refused.value)

    checkpoint = save_tiny_checkpoint(tmp_path / "checkpoint", other_tokenizer())
    folder = split_dir(tiny_run["data_dir"], "single", "dev")
    with pytest.raises(SystemExit) as stopped:
        predict.main(["--checkpoint", str(checkpoint), "--task", "single", "--input", str(folder),
                      "--output", str(tmp_path / "p.jsonl"), "--device", "cpu"])  # fmt: skip
    predict_error = capfd.readouterr().err.strip().splitlines()[-1].removeprefix("error: ")
    assert stopped.value.code == 2 and TOKENIZER_KEY in train_error and TOKENIZER_KEY in predict_error
    # The same check: only where it was found differs (the cache's manifest, or the split folder).
    assert train_error.split(TOKENIZER_KEY)[1] == predict_error.split(TOKENIZER_KEY)[1]
    assert train_error.startswith(tiny_run["data_dir"]) and predict_error.startswith(
        f"{folder}: task 'single'"
    )


def test_the_cache_check_reads_the_same_limits_from_a_loaded_encoder_and_its_config_json(
    tiny_run: dict,
) -> None:
    encoder = Path(tiny_run["init_checkpoint"])
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    loaded = CacheCheck.for_encoder(tokenizer, AutoConfig.from_pretrained(str(encoder)))
    on_disk = CacheCheck.for_config_json(tokenizer, json.loads((encoder / "config.json").read_text()))
    assert loaded == on_disk and loaded.vocab_size == len(TINY_VOCAB) and loaded.max_positions == 128


def test_a_split_folder_of_another_task_is_named(tiny_run: dict) -> None:
    encoder = Path(tiny_run["init_checkpoint"])
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    check = CacheCheck.for_encoder(tokenizer, AutoConfig.from_pretrained(str(encoder)))
    folder = split_dir(tiny_run["data_dir"], "pair", "dev")
    with pytest.raises(UserError, match="holds a token-id cache of task 'pair', not 'single'"):
        check.split(folder, tiny_task_defs()["single"])
    assert len(check.split(folder, tiny_task_defs()["pair"])) > 0


def test_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(
        UserError, match=r"^--device cuda:1: no CUDA device is available \(use --device cpu\)$"
    ):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 3)  # a torchrun rank's GPU
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")
