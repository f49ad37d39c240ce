"""Task kinds: one per task type, each builds its head, reads its output and prepares its batches."""

from __future__ import annotations

import dataclasses
import itertools
import os

import numpy as np
import pytest
import torch

from data_utils.dataset import Batch
from data_utils.enums import HeadType, TaskType
from data_utils.task_def import TaskDef, parse_task_def
from module.heads import MaskedLMHead, PooledHead, RankingHead
from module.san import SANClassifier, SANConfig
from mt_dnn.tasks import TASK_KINDS, BatchScores, BatchShape, EncoderOutput, HeadOptions, task_kind
from mt_dnn.tasks.registry import register_task_kind

os.environ.setdefault("HF_HUB_OFFLINE", "1")

H, V = 8, 13
ENTRIES = {
    TaskType.CLASSIFICATION: {"task_type": "classification", "data_format": "premise_only", "n_class": 3},
    TaskType.REGRESSION: {"task_type": "regression", "data_format": "premise_only"},
    TaskType.RANKING: {"task_type": "ranking", "data_format": "premise_and_multi_hypothesis"},
    TaskType.MASK_LM: {"task_type": "mask_lm", "data_format": "premise_only"},
}
EXPECTED = {
    (TaskType.CLASSIFICATION, HeadType.LINEAR): (PooledHead, (4, 3)),
    (TaskType.CLASSIFICATION, HeadType.SAN): (SANClassifier, (4, 3)),
    (TaskType.REGRESSION, HeadType.LINEAR): (PooledHead, (4,)),
    (TaskType.RANKING, HeadType.LINEAR): (RankingHead, (2, 2)),
    # two masked positions in each of the 4 rows -> [8, V] logits
    (TaskType.MASK_LM, HeadType.LINEAR): (MaskedLMHead, (8, V)),
}


def task(task_type: TaskType, head: HeadType = HeadType.LINEAR) -> TaskDef:
    """A task definition of ``task_type`` whose head is ``head`` (validation of the YAML bypassed for SAN on
    other types, so that the kind's own check is what is tested)."""
    return dataclasses.replace(parse_task_def("t", ENTRIES[task_type]), head=head)


def encoded(n: int = 4, length: int = 5) -> EncoderOutput:
    return EncoderOutput(
        hidden_states=torch.randn(n, length, H),
        attention_mask=torch.ones(n, length, dtype=torch.long),
        token_type_ids=None,
        pooled=None,
        word_embeddings=torch.randn(V, H),
    )


def test_every_task_type_has_exactly_one_kind() -> None:
    # The registry holds every built-in type, and kinds that are not TaskType members (sequence_labeling).
    assert set(TaskType) <= set(TASK_KINDS)
    assert "sequence_labeling" in TASK_KINDS
    for name, kind in TASK_KINDS.items():
        assert kind.task_type == kind.name == name
        assert task_kind(str(name)) is kind
    for task_type in TaskType:
        assert TASK_KINDS[task_type].name is task_type


def test_each_built_in_kind_is_its_own_class() -> None:
    from data_utils.kinds import KINDS
    from mt_dnn.tasks.classification import Classification
    from mt_dnn.tasks.mask_lm import MaskLM
    from mt_dnn.tasks.ranking import Ranking
    from mt_dnn.tasks.regression import Regression
    from mt_dnn.tasks.sequence_labeling import SequenceLabeling
    from mt_dnn.tasks.span.kind import Span

    assert KINDS is TASK_KINDS
    expected = {
        TaskType.CLASSIFICATION: Classification,
        TaskType.REGRESSION: Regression,
        TaskType.RANKING: Ranking,
        TaskType.MASK_LM: MaskLM,
        "sequence_labeling": SequenceLabeling,
        "span": Span,
    }
    assert {name: type(kind) for name, kind in TASK_KINDS.items()} == expected
    for name, entry in ENTRIES.items():
        assert type(parse_task_def("t", entry).kind) is expected[name]


def test_registering_a_type_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_task_kind(type(task_kind(TaskType.REGRESSION)))


@pytest.mark.parametrize("pair", list(itertools.product(TaskType, HeadType)), ids=str)
def test_each_kind_builds_its_head_and_reads_its_output(pair: tuple[TaskType, HeadType]) -> None:
    task_type, head_type = pair
    kind = task_kind(task_type)
    options = HeadOptions(hidden_size=H, vocab_size=V, san=SANConfig(num_steps=2))
    if pair not in EXPECTED:
        with pytest.raises(ValueError, match="SAN head serves classification only"):
            kind.build_head(task(task_type, head_type), options)
        return
    cls, shape = EXPECTED[pair]
    torch.manual_seed(0)
    head = kind.build_head(task(task_type, head_type), options).eval()
    assert type(head) is cls
    head_inputs: dict[str, torch.Tensor] = {}
    if task_type is TaskType.MASK_LM:
        positions = torch.zeros(4, 5, dtype=torch.bool)
        positions[:, 1:3] = True
        head_inputs = {"positions": positions}
    n_candidates = 2 if task_type is TaskType.RANKING else 1
    out = kind.run_head(head, encoded(), BatchShape(n_candidates=n_candidates, head_inputs=head_inputs))
    assert out.shape == shape


def test_head_options_reach_the_heads() -> None:
    options = HeadOptions(hidden_size=H, vocab_size=V, use_encoder_pooler=True, san=SANConfig(num_steps=7))
    san = task_kind(TaskType.CLASSIFICATION).build_head(task(TaskType.CLASSIFICATION, HeadType.SAN), options)
    assert isinstance(san, SANClassifier) and san.config.num_steps == 7
    pooled = task_kind(TaskType.REGRESSION).build_head(task(TaskType.REGRESSION), options)
    assert isinstance(pooled, PooledHead) and pooled.dense is None
    ranking = task_kind(TaskType.RANKING).build_head(task(TaskType.RANKING), options)
    assert isinstance(ranking, RankingHead) and ranking.scorer.dense is None


@pytest.mark.parametrize("task_type", [TaskType.REGRESSION, TaskType.RANKING])
def test_single_output_kinds_reject_n_class_above_one(task_type: TaskType) -> None:
    wide = dataclasses.replace(task(task_type), n_class=3)
    with pytest.raises(ValueError, match="n_class=3"):
        task_kind(task_type).build_head(wide, HeadOptions(hidden_size=H, vocab_size=V))


def test_mask_lm_needs_positions() -> None:
    kind = task_kind(TaskType.MASK_LM)
    head = kind.build_head(task(TaskType.MASK_LM), HeadOptions(hidden_size=H, vocab_size=V))
    with pytest.raises(ValueError, match="positions"):
        kind.run_head(head, encoded(), BatchShape())


def _batch(candidate_mask: torch.Tensor | None = None) -> Batch:
    n = 2 if candidate_mask is None else int(candidate_mask.numel())
    return Batch(
        task="t",
        input_ids=torch.ones(n, 3, dtype=torch.long),
        attention_mask=torch.ones(n, 3, dtype=torch.long),
        token_type_ids=None,
        labels=torch.tensor([0, 1]),
        uids=["a", "b"],
        candidate_mask=candidate_mask,
    )


def test_only_ranking_masks_its_outputs() -> None:
    mask = torch.tensor([[True, True], [True, False]])
    assert torch.equal(task_kind(TaskType.RANKING).output_mask(_batch(mask)), mask)
    for task_type in (TaskType.CLASSIFICATION, TaskType.REGRESSION):
        assert task_kind(task_type).output_mask(_batch()) is None


def test_ranking_scores_pad_with_minus_infinity_and_count_candidates() -> None:
    kind = task_kind(TaskType.RANKING)
    batch = _batch(torch.tensor([[True, True], [True, False]]))
    scores = kind.scores(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), batch)
    assert scores[1, 1] == float("-inf") and scores[0, 1] == 2.0
    assert kind.candidate_counts(batch).tolist() == [2, 1]


def test_classification_scores_are_probabilities() -> None:
    scores = task_kind(TaskType.CLASSIFICATION).scores(torch.tensor([[0.0, 1.0, 2.0]]), _batch())
    torch.testing.assert_close(scores.sum(dim=-1), torch.ones(1))


def test_assemble_puts_rows_back_in_input_order_once() -> None:
    kind = task_kind(TaskType.REGRESSION)
    definition = task(TaskType.REGRESSION)

    def part(rows: list[int]) -> BatchScores:
        return BatchScores(
            indices=np.array(rows),
            uids=[f"u{r}" for r in rows],
            scores=np.array(rows, dtype=np.float32) / 10,
            labels=np.array(rows, dtype=np.float32),
        )

    predictions = kind.assemble(definition, [part([2, 0]), part([1])], 3)
    assert predictions.uids == ["u0", "u1", "u2"]
    np.testing.assert_allclose(predictions.scores, [0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="predicted twice"):
        kind.assemble(definition, [part([0, 1]), part([1, 2])], 3)
    with pytest.raises(ValueError, match="never predicted"):
        kind.assemble(definition, [part([0])], 2)
