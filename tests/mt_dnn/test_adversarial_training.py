"""Every adversarial method inside the multi-task trainer, on the four toy tasks and a tiny encoder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from module.adversarial import AdversarialMethodName
from mt_dnn.model import MTDNNModel
from mt_dnn.trainer import Trainer
from tests.mt_dnn.test_trainer import config_for, state_of


@pytest.mark.parametrize("name", list(AdversarialMethodName))
def test_every_method_trains_all_task_types_with_a_finite_loss(
    tiny_run: dict, tmp_path: Path, name: str
) -> None:
    config = config_for(tiny_run, tmp_path, adv_method=name, epochs=1, log_every_steps=4)
    trainer = Trainer(config)
    before = state_of(trainer.model)
    results = trainer.train(until_step=8 * trainer.replays)
    assert results["steps"] == 8 * trainer.replays and results["nonfinite_steps_skipped"] == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert train and all({"loss", "adv_loss", "delta_ratio", "adv_skipped"} <= set(r) for r in train)
    losses = [value for r in train for value in r["loss"].values()]
    assert all(math.isfinite(value) for value in losses)
    ratios = [value for r in train for value in r["delta_ratio"].values()]
    if name == "rdrop":  # two dropout samples, no perturbation: its term is their divergence
        assert all(value == 0 for value in ratios)
        assert all(value > 0 for r in train for value in r["adv_loss"].values())
    else:  # a real perturbation (bounds: module tests)
        assert all(0 < value < math.inf for value in ratios), ratios
    after = state_of(trainer.model)
    key = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[key], after[key])


def test_freeat_takes_one_optimizer_step_per_replay(tiny_run: dict, tmp_path: Path) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path, adv_method="freeat", adv_replays=3, epochs=1))
    assert trainer.replays == 3
    batches = len(trainer.sampler)
    assert trainer.total_steps == 3 * batches  # the learning-rate schedule counts the replays
    results = trainer.train()
    assert results["steps"] == 3 * batches and results["finished"]


def test_a_resumed_freeat_run_equals_the_uninterrupted_one(tiny_run: dict, tmp_path: Path) -> None:
    options: dict[str, Any] = {"adv_method": "freeat", "adv_replays": 2, "adv_epsilon": 1e-2}
    full = Trainer(config_for(tiny_run, tmp_path / "full", **options))
    full.train()
    interrupted = Trainer(config_for(tiny_run, tmp_path / "split", **options))
    interrupted.train(until_step=interrupted.steps_per_epoch + 4)
    resumed = Trainer(config_for(tiny_run, tmp_path / "split", resume=True, **options))
    resumed.train()
    expected, actual = state_of(full.model), state_of(resumed.model)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=1e-6)


def test_resume_refuses_a_different_method(tiny_run: dict, tmp_path: Path) -> None:
    Trainer(config_for(tiny_run, tmp_path, adv_method="fgm")).train(until_step=2)
    from data_utils.errors import UserError

    with pytest.raises(UserError, match=r"--adversarial.method \(--adv_method\) differs"):
        Trainer(config_for(tiny_run, tmp_path, adv_method="pgd", resume=True)).train()


def test_an_r4f_checkpoint_reloads_its_spectral_norm_to_identical_logits(
    tiny_run: dict, tmp_path: Path
) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path, adv_method="r4f", epochs=1))
    trainer.train()
    assert trainer.model.options.spectral_norm_heads
    model = trainer.model.eval()
    reloaded = MTDNNModel.load(tmp_path / "last").eval()
    assert reloaded.options.spectral_norm_heads
    ids = torch.randint(5, 90, (3, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(reloaded("single", ids, mask), model("single", ids, mask), rtol=0, atol=0)
    weight = model.heads["single"].out_proj.weight
    assert torch.linalg.matrix_norm(weight.detach(), ord=2).item() == pytest.approx(1.0, rel=0.05)


def test_yopo_reruns_only_the_encoders_embedding_block(tiny_run: dict, tmp_path: Path) -> None:
    trainer = Trainer(config_for(tiny_run, tmp_path, adv_method="yopo", adv_outer_steps=2, adv_k=3))
    model = trainer.model
    calls = {"embeddings": 0, "layer0": 0}
    model.encoder.embeddings.register_forward_hook(
        lambda *a: calls.__setitem__("embeddings", calls["embeddings"] + 1)
    )
    model.encoder.encoder.layer[0].register_forward_hook(
        lambda *a: calls.__setitem__("layer0", calls["layer0"] + 1)
    )
    batch = next(iter(trainer.loader)).to(trainer.device)
    loss, stats = trainer.objective.backward_step(model, batch, lambda value: value.backward())
    assert calls == {"embeddings": 2 + 3, "layer0": 2}
    assert torch.isfinite(loss) and stats["delta_ratio"] > 0
