"""The HF Trainer plug-in on a tiny random BERT and the real ``transformers.Trainer`` (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from module.adversarial.integrations.hf_trainer import AdversarialTrainer
from module.adversarial.names import AdversarialMethodName

# Small, fast settings per method (defaults where they are already cheap).
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "smart": {"epsilon": 1e-2, "step_size": 1e-2, "noise_var": 1e-3},
    "alum": {"epsilon": 1e-2, "step_size": 1e-2, "noise_var": 1e-3},
    "r3f": {"noise_var": 1e-2},
    "r4f": {"noise_var": 1e-2},
    "fgsm": {"epsilon": 1e-2},
    "fgm": {},
    "pgd": {"k": 2},
    "freeat": {"replays": 1, "epsilon": 1e-2},
    "yopo": {"outer_steps": 2, "k": 2, "epsilon": 1e-2, "step_size": 5e-3},
    "freelb": {"k": 2},
    "rdrop": {},
}


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def dataset(rows: int = 8, length: int = 12) -> list[dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(1)
    examples = []
    for row in range(rows):
        real = length - (row % 4)  # some padding, so the token mask matters
        ids = torch.randint(1, 100, (length,), generator=generator)
        mask = (torch.arange(length) < real).long()
        examples.append({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.tensor(row % 2)})
    return examples


def arguments(out: Path, steps: int = 3, accumulation: int = 1) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )


class GradientLog(TrainerCallback):
    """Copies of every parameter gradient just before each optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Tensor]] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        self.steps.append(
            {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        )


def train(trainer_cls: type[Trainer], out: Path, steps: int = 3, accumulation: int = 1, **kwargs: Any):
    model = kwargs.pop("model", None) or tiny_bert()
    log = GradientLog()
    trainer = trainer_cls(
        model=model,
        args=arguments(out, steps, accumulation),
        train_dataset=dataset(),
        callbacks=[log],
        **kwargs,
    )
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, result, log, losses


def assert_same_gradients(a: GradientLog, b: GradientLog) -> None:
    assert len(a.steps) == len(b.steps) > 0
    for left, right in zip(a.steps, b.steps, strict=True):
        assert left.keys() == right.keys()
        for name in left:
            torch.testing.assert_close(left[name], right[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("name", [method.value for method in AdversarialMethodName])
def test_every_method_trains_with_the_real_trainer(name: str, tmp_path: Path) -> None:
    before = {key: value.clone() for key, value in tiny_bert().state_dict().items()}
    trainer, result, log, losses = train(
        AdversarialTrainer, tmp_path, adv_method=name, adv_params=FAST_PARAMS[name]
    )
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert len(log.steps) == 3
    after = trainer.model.state_dict()
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(before[embeddings], after[embeddings])
    assert set(trainer.adversarial_stats) >= {"adv_loss", "delta_ratio", "adv_skipped"}
    assert float(trainer.adversarial_stats["adv_skipped"]) == 0.0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fgm", {"alpha": 0.0}),
        ("smart", {"alpha": 0.0}),
        ("freelb", {"k": 1, "init_mag": 0.0}),
        ("yopo", {"outer_steps": 1, "epsilon": 0.0}),
    ],
)
def test_zero_strength_reproduces_plain_trainer_gradients(
    name: str, params: dict[str, Any], tmp_path: Path
) -> None:
    """(SMART without its Bregman term, which moves the gradient from the second step on.)"""
    _, _, plain, plain_losses = train(Trainer, tmp_path / "plain")
    _, _, adversarial, losses = train(
        AdversarialTrainer, tmp_path / name, adv_method=name, adv_params=params, adv_bregman=False
    )
    assert_same_gradients(plain, adversarial)
    assert losses == pytest.approx(plain_losses, rel=1e-4)


def test_backward_owning_methods_scale_for_gradient_accumulation(tmp_path: Path) -> None:
    """FreeLB owns its backward; with 2 accumulation steps its gradient is the mean over micro-batches."""
    reference = tiny_bert()
    reference.accepts_loss_kwargs = False  # the plain Trainer then divides BERT's mean loss by the steps too
    _, _, plain, _ = train(Trainer, tmp_path / "plain", steps=2, accumulation=2, model=reference)
    _, _, freelb, _ = train(
        AdversarialTrainer,
        tmp_path / "freelb",
        steps=2,
        accumulation=2,
        adv_method="freelb",
        adv_params={"k": 1, "init_mag": 0.0},
    )
    assert_same_gradients(plain, freelb)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fgm", {"alpha": 0.5}),
        ("smart", {"alpha": 2.0, "epsilon": 1e-1, "step_size": 1e-1, "noise_var": 1e-2}),
        ("r3f", {"alpha": 2.0, "noise_var": 1e-1, "radius": "absolute"}),
    ],
)
def test_the_adversarial_term_is_added(name: str, params: dict[str, Any], tmp_path: Path) -> None:
    """The logged loss is the plain loss + alpha * (adversarial loss or divergence), and the gradient moves."""
    _, _, plain, plain_losses = train(Trainer, tmp_path / "plain", steps=1)
    trainer, _, adversarial, losses = train(
        AdversarialTrainer, tmp_path / name, steps=1, adv_method=name, adv_params=params
    )
    term = params["alpha"] * float(trainer.adversarial_stats["adv_loss"])
    assert term > 1e-6
    assert losses[0] == pytest.approx(plain_losses[0] + term, rel=1e-3)
    weight = "classifier.weight"
    assert not torch.allclose(plain.steps[0][weight], adversarial.steps[0][weight], rtol=1e-4, atol=1e-7)


def test_r4f_normalises_the_head(tmp_path: Path) -> None:
    trainer, _, _, _ = train(AdversarialTrainer, tmp_path, steps=1, adv_method="r4f")
    assert torch.nn.utils.parametrize.is_parametrized(trainer.model.classifier, "weight")


def test_evaluation_is_plain(tmp_path: Path) -> None:
    model = tiny_bert()
    common = {"args": arguments(tmp_path), "train_dataset": dataset(), "eval_dataset": dataset()}
    adversarial = AdversarialTrainer(model=model, adv_method="pgd", **common).evaluate()
    plain = Trainer(model=model, **common).evaluate()
    assert adversarial["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-6)


def test_a_custom_trainer_loss_is_not_silently_dropped(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="adv_task_loss"):
        AdversarialTrainer(
            model=tiny_bert(),
            args=arguments(tmp_path),
            train_dataset=dataset(),
            compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum(),
            adv_method="fgm",
        )
