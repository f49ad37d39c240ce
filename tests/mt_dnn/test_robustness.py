"""The PGD robustness attack (``mt_dnn.robustness``) and ``predict`` under a perturbation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from data_utils.dataset import Batch, Collator
from data_utils.enums import TaskType
from data_utils.task_def import TaskDef
from module.adversarial import add_to_output, norm
from module.losses import task_loss
from mt_dnn.inference import evaluate, predict
from mt_dnn.model import MTDNNModel, forward_batch
from mt_dnn.robustness import EmbeddingAttack, PGDPerturbation, embedding_norm, robustness_curve
from tests.mt_dnn.test_inference import make_dataset


@pytest.fixture
def collator(tiny_mtdnn_task_defs: dict[str, TaskDef]) -> Collator:
    return Collator(tiny_mtdnn_task_defs, pad_token_id=0)


def one_batch(task_def: TaskDef, tokenizer: Any, collator: Collator, n: int = 11) -> Batch:
    dataset = make_dataset(task_def, tokenizer, n)
    return collator([dataset[i] for i in range(len(dataset))])


def loss_at(model: MTDNNModel, task_def: TaskDef, batch: Batch, delta: torch.Tensor) -> float:
    """The task loss with ``delta`` added to the word embeddings."""
    ranking = task_def.task_type is TaskType.RANKING
    with torch.no_grad(), add_to_output(model.perturbation_target(), delta):
        outputs = forward_batch(model, batch)
    assert batch.labels is not None
    return float(
        task_loss(task_def.loss, outputs, batch.labels, mask=batch.candidate_mask if ranking else None)
    )


@pytest.mark.parametrize("task", ["single", "pair", "score", "rank"])
def test_radius_zero_scores_exactly_the_clean_model(
    task: str,
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn()
    task_def = tiny_mtdnn_task_defs[task]
    dataset = make_dataset(task_def, tiny_tokenizer)
    clean = evaluate(model, dataset, collator, batch_size=4)
    perturbation = PGDPerturbation(model, task_def, EmbeddingAttack(0.0, steps=3))
    attacked = evaluate(model, dataset, collator, batch_size=4, perturbation=perturbation)
    np.testing.assert_array_equal(attacked.predictions.scores, clean.predictions.scores)
    assert attacked.metrics == clean.metrics


@pytest.mark.parametrize(("p_norm", "level"), [("l2", "token"), ("l2", "sentence"), ("inf", "token")])
def test_the_perturbation_stays_in_its_ball_and_off_padding(
    p_norm: str,
    level: str,
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn()
    task_def = tiny_mtdnn_task_defs["single"]
    batch = one_batch(task_def, tiny_tokenizer, collator)
    assert (batch.attention_mask == 0).any()  # rows of different lengths: there is padding to keep clean
    epsilon = 0.3
    delta = PGDPerturbation(
        model, task_def, EmbeddingAttack(epsilon, steps=4, p_norm=p_norm, norm_level=level)
    )(batch)
    assert delta.shape == (*batch.input_ids.shape, model.encoder.config.hidden_size)
    assert torch.all(delta[batch.attention_mask == 0] == 0)
    norms = norm(delta, p_norm, level)
    assert float(norms.max()) <= epsilon * (1 + 1e-5)
    assert float(norms.max()) > 0.5 * epsilon  # 2.5 * eps / steps per step: the walk reaches the surface


@pytest.mark.parametrize("task", ["single", "score", "rank"])
def test_pgd_raises_the_loss_more_than_random_noise_of_the_same_size(
    task: str,
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn()
    task_def = tiny_mtdnn_task_defs[task]
    batch = one_batch(task_def, tiny_tokenizer, collator)
    epsilon = 0.5
    delta = PGDPerturbation(model, task_def, EmbeddingAttack(epsilon, steps=5))(batch)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(delta.shape, generator=generator)
    noise = epsilon * noise / torch.linalg.vector_norm(noise, dim=-1, keepdim=True)
    noise = noise * batch.attention_mask[..., None]
    clean = loss_at(model, task_def, batch, torch.zeros_like(delta))
    attacked = loss_at(model, task_def, batch, delta)
    random = loss_at(model, task_def, batch, noise)
    assert attacked > clean
    assert attacked - clean > 2 * abs(random - clean)


def test_a_larger_radius_lowers_the_gold_probability(
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn()
    task_def = tiny_mtdnn_task_defs["pair"]
    dataset = make_dataset(task_def, tiny_tokenizer, 24)
    gold_probability = []
    for radius in (0.0, 0.2, 1.0):
        perturbation = PGDPerturbation(model, task_def, EmbeddingAttack(radius, steps=5))
        predictions = predict(model, dataset, collator, batch_size=8, perturbation=perturbation)
        assert predictions.labels is not None
        gold_probability.append(float(predictions.scores[np.arange(len(dataset)), predictions.labels].mean()))
    assert gold_probability[0] > gold_probability[1] > gold_probability[2]


def test_robustness_curve_gives_the_metrics_at_each_radius(
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn().train()  # dropout on: the curve must still be computed in eval mode
    task_def = tiny_mtdnn_task_defs["single"]
    dataset = make_dataset(task_def, tiny_tokenizer, 16)
    attacks = [EmbeddingAttack(radius, steps=2) for radius in (0.0, 2.0)]
    curve = robustness_curve(model, dataset, collator, attacks, batch_size=8)
    assert (
        robustness_curve(model, dataset, collator, attacks, batch_size=8) == curve
    )  # no dropout: repeatable
    assert curve[0].metrics == evaluate(model, dataset, collator, batch_size=8).metrics
    assert (
        set(curve[1].metrics) == set(curve[0].metrics) and curve[1].metrics["acc"] <= curve[0].metrics["acc"]
    )
    assert [point.skipped_batches for point in curve] == [0, 0]
    # The model is left as it was: train mode, trainable parameters, and no gradient written.
    assert model.training and all(module.training for module in model.modules())
    assert all(parameter.requires_grad and parameter.grad is None for parameter in model.parameters())


def test_a_batch_with_a_non_finite_attack_gradient_is_scored_clean_and_counted(
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn().eval()
    task_def = tiny_mtdnn_task_defs["score"]
    perturbation = PGDPerturbation(model, task_def, EmbeddingAttack(1.0, steps=2))
    good = one_batch(task_def, tiny_tokenizer, collator)
    assert good.labels is not None
    # NaN labels: a NaN loss, so a NaN attack gradient.
    bad = dataclasses.replace(good, labels=torch.full_like(good.labels, float("nan")))
    deltas = [perturbation(batch) for batch in (good, bad, good, bad, bad)]
    assert perturbation.skipped_batches == 3
    assert all(float(deltas[i].abs().sum()) == 0.0 for i in (1, 3, 4)) and float(deltas[0].abs().sum()) > 0


def test_the_attack_needs_labels_and_refuses_bad_settings(
    make_tiny_mtdnn: Callable[..., MTDNNModel],
    tiny_mtdnn_task_defs: dict[str, TaskDef],
    tiny_tokenizer: Any,
    collator: Collator,
) -> None:
    model = make_tiny_mtdnn()
    task_def = tiny_mtdnn_task_defs["single"]
    unlabelled = make_dataset(task_def, tiny_tokenizer, labelled=False)
    perturbation = PGDPerturbation(model, task_def, EmbeddingAttack(0.1))
    with pytest.raises(ValueError, match="needs gold labels"):
        predict(model, unlabelled, collator, batch_size=4, perturbation=perturbation)
    labelled = make_dataset(task_def, tiny_tokenizer)
    with torch.inference_mode(), pytest.raises(ValueError, match="outside torch.inference_mode"):
        predict(model, labelled, collator, batch_size=4, perturbation=perturbation)
    with pytest.raises(ValueError, match="epsilon"):
        EmbeddingAttack(-1.0)
    with pytest.raises(ValueError, match="steps"):
        EmbeddingAttack(0.1, steps=0)
    assert EmbeddingAttack(0.4, steps=4).pgd_config.step_size == pytest.approx(0.25)


def test_embedding_norm_is_the_mean_row_norm(make_tiny_mtdnn: Callable[..., MTDNNModel]) -> None:
    model = make_tiny_mtdnn()
    weight = model.perturbation_target().weight.detach()
    assert embedding_norm(model) == pytest.approx(float(weight.norm(dim=1).mean()), rel=1e-6)
