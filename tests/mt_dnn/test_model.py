from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel

from data_utils.enums import HeadType
from data_utils.errors import UserError
from data_utils.task_def import parse_task_def
from mt_dnn.model import CONFIG_FILE, ENCODER_DIR, HEADS_FILE, MTDNNModel
from tests.conftest import TASK_ENTRIES
from tests.mt_dnn.conftest import build_tiny_mtdnn, tiny_task_defs


def inputs(batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 60, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, -3:] = 0
    token_type_ids = torch.zeros(batch, length, dtype=torch.long)
    token_type_ids[:, length // 2 :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def all_outputs(model: MTDNNModel) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            "single": model("single", **inputs(3, 10)),
            "pair": model("pair", **inputs(3, 12)),
            "score": model("score", **inputs(3, 12)),
            "rank": model("rank", **inputs(6, 12), n_candidates=3),
        }


def test_forward_shapes_per_task_type() -> None:
    outputs = all_outputs(build_tiny_mtdnn())
    assert outputs["single"].shape == (3, 2)
    assert outputs["pair"].shape == (3, 3)
    assert outputs["score"].shape == (3,)
    assert outputs["rank"].shape == (2, 3)


def test_san_head_and_per_task_dropout() -> None:
    entries = {**TASK_ENTRIES, "pair": {**TASK_ENTRIES["pair"], "head": "san", "dropout_p": 0.3}}
    defs = {name: parse_task_def(name, entry) for name, entry in entries.items()}
    model = build_tiny_mtdnn(defs)
    assert defs["pair"].head is HeadType.SAN
    log_probs = all_outputs(model)["pair"]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3))
    dropouts = [m.p for m in model.heads["pair"].modules() if isinstance(m, torch.nn.Dropout)]
    assert 0.3 in dropouts


def test_perturbation_target_is_the_word_embedding_module() -> None:
    model = build_tiny_mtdnn()
    assert model.perturbation_target() is model.encoder.embeddings.word_embeddings


def test_unknown_task_raises() -> None:
    with pytest.raises(KeyError, match="task 'nope' has no head"):
        build_tiny_mtdnn()("nope", **inputs(2, 4))


def test_save_then_load_gives_identical_outputs(tmp_path: Path, tiny_tokenizer: Any) -> None:
    model = build_tiny_mtdnn(seed=3)
    model.save(tmp_path / "ckpt", tiny_tokenizer, metadata={"step": 12})
    loaded = MTDNNModel.load(tmp_path / "ckpt").eval()
    expected, actual = all_outputs(model), all_outputs(loaded)
    for task in expected:
        assert torch.equal(expected[task], actual[task]), task
    assert loaded.task_defs == model.task_defs
    assert list(loaded.task_defs) == list(model.task_defs)  # order kept (mix_opt's main task is the first)
    config = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert config["metadata"] == {"step": 12} and "torch" in config["versions"]
    assert (tmp_path / "ckpt" / HEADS_FILE).is_file()


def test_encoder_folder_loads_with_plain_automodel(tmp_path: Path, tiny_tokenizer: Any) -> None:
    model = build_tiny_mtdnn(seed=4)
    model.save(tmp_path / "ckpt", tiny_tokenizer)
    plain = AutoModel.from_pretrained(tmp_path / "ckpt" / ENCODER_DIR).eval()
    batch = inputs(2, 8)
    with torch.no_grad():
        ours = model.encoder(**batch).last_hidden_state
        theirs = plain(**batch).last_hidden_state
    assert torch.equal(ours, theirs)


def test_save_is_atomic_and_keeps_the_previous_checkpoint(
    tmp_path: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_tiny_mtdnn(seed=5)
    model.save(tmp_path / "ckpt", tiny_tokenizer)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir() if p.is_file()}

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # a kill in the middle of writing the heads

    monkeypatch.setattr("mt_dnn.model.safetensors.torch.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_mtdnn(seed=6).save(tmp_path / "ckpt", tiny_tokenizer)
    after = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir() if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp folder left behind


def test_loading_a_non_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not an smart-mtdnn checkpoint"):
        MTDNNModel.load(tmp_path)


def test_heads_that_disagree_with_the_config_are_a_user_error(tmp_path: Path, tiny_tokenizer: Any) -> None:
    model = build_tiny_mtdnn()
    model.save(tmp_path / "ckpt", tiny_tokenizer)
    config_path = tmp_path / "ckpt" / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["task_defs"]["pair"]["labels"] = ["a", "b"]
    config["task_defs"]["pair"]["n_class"] = 2
    config_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="heads do not match"):
        MTDNNModel.load(tmp_path / "ckpt")


def test_a_model_needs_tasks() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        MTDNNModel(build_tiny_mtdnn().encoder, {})
    assert len(tiny_task_defs()) == 4


def test_compiled_encoder_gives_the_same_logits_and_state_dict_keys() -> None:
    model = build_tiny_mtdnn()
    ids = torch.randint(5, 30, (3, 9))
    attention = torch.ones_like(ids)
    expected = model("pair", ids, attention)
    keys = list(model.state_dict())
    model.compile_encoder(backend="eager")  # the plumbing; inductor needs a C++ toolchain and minutes
    torch.testing.assert_close(model("pair", ids, attention), expected)
    assert list(model.state_dict()) == keys


def test_usable_positions_discount_robertas_padding_offset() -> None:
    from mt_dnn.model import usable_positions

    assert usable_positions({"model_type": "bert", "max_position_embeddings": 512}) == 512
    assert (
        usable_positions({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}) == 512
    )
    assert usable_positions({"model_type": "mpnet", "max_position_embeddings": 514, "pad_token_id": 1}) == 512
    assert usable_positions({"model_type": "bert"}) is None
