"""The span task type's building blocks: windows, head, loss, divergence, decoding, EM/F1."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from mt_dnn.tasks.span import (
    NO_CHAR,
    UNLABELLED,
    PairLayout,
    SpanHead,
    SpanMetric,
    Window,
    answer_token_span,
    decode_example,
    doc_windows,
    encode_questions,
    exact_match,
    normalize_answer,
    pack_windows,
    span_divergence,
    span_f1,
    span_loss,
    squad_scores,
    tokenize_texts,
    tokenize_with_offsets,
)
from tests.mt_dnn.conftest import tiny_bert_config

CONTEXT = (
    "the cat sat on the mat and the dog walked to the river. a man played in the house at night, "
    "then the woman walked the red car up the big tree. the sun was new and the moon was old."
)
ANSWER = "the red car"
QUESTION = "what was walked up the tree?"


def encode(tokenizer: Any, question: str = QUESTION, context: str = CONTEXT) -> tuple[list[int], Any]:
    question_ids, _ = tokenize_with_offsets(tokenizer, question)
    return question_ids, tokenize_with_offsets(tokenizer, context)


def windows_of(tokenizer: Any, *, max_seq_len: int = 24, doc_stride: int = 6, answer: str | None = ANSWER):
    question_ids, (context_ids, offsets) = encode(tokenizer)
    span = None if answer is None else (CONTEXT.index(answer), CONTEXT.index(answer) + len(answer))
    layout = PairLayout.from_tokenizer(tokenizer)
    windows = doc_windows(question_ids, context_ids, offsets, max_seq_len, doc_stride, layout, answer=span)
    return windows, context_ids, offsets, layout


# --- windows ---------------------------------------------------------------------------------------------


def test_layout_of_a_bert_tokenizer(tiny_tokenizer: Any) -> None:
    layout = PairLayout.from_tokenizer(tiny_tokenizer)
    cls, sep = tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id
    assert (layout.prefix, layout.middle, layout.suffix) == ((cls,), (sep,), (sep,))
    assert (layout.prefix_types, layout.middle_types, layout.suffix_types) == ((0,), (0,), (1,))
    assert (layout.question_type, layout.context_type) == (0, 1)


def roberta_style_tokenizer() -> Any:
    """A word-level fast tokenizer with RoBERTa's post-processor: ``<s> q </s></s> c </s>``, one segment id."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ("<s>", "<pad>", "</s>", "<unk>", "who", "sat", "the", "cat", "on", "mat")
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    specials = {"cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def test_windows_follow_a_roberta_style_layout() -> None:
    tokenizer = roberta_style_tokenizer()
    layout = PairLayout.from_tokenizer(tokenizer)
    assert (layout.prefix, layout.middle, layout.suffix) == ((0,), (2, 2), (2,))
    context = "the cat sat on the mat"
    question_ids, (context_ids, offsets) = encode(tokenizer, "who sat", context)
    windows = doc_windows(question_ids, context_ids, offsets, 9, 2, layout, answer=(8, 11))
    pair = tokenizer("who sat", context, return_token_type_ids=True)
    assert len(windows) == 3 and windows[0].input_ids == tuple(pair["input_ids"][:8]) + (2,)
    assert all(w.token_type_ids == (0,) * len(w) for w in windows)
    for window in windows:
        if window.has_answer:
            assert context[slice(*window.char_spans[window.start_position])] == "sat"
    assert [w.has_answer for w in windows] == [True, True, False]


def test_a_window_reads_like_the_tokenizers_own_pair_encoding(tiny_tokenizer: Any) -> None:
    """A context that fits gives one window, token for token what the tokenizer makes of the pair."""
    context = "the cat sat on the mat"
    question_ids, (context_ids, offsets) = encode(tiny_tokenizer, "who sat", context)
    layout = PairLayout.from_tokenizer(tiny_tokenizer)
    (window,) = doc_windows(question_ids, context_ids, offsets, 64, 8, layout, answer=(4, 7))
    pair = tiny_tokenizer("who sat", context, return_token_type_ids=True)
    assert list(window.input_ids) == pair["input_ids"]
    assert list(window.token_type_ids) == pair["token_type_ids"]
    assert context[slice(*window.char_spans[window.start_position])] == "cat"
    assert window.start_position == window.end_position == window.context_offset + 1
    assert window.char_spans[0] == NO_CHAR and window.char_spans[-1] == NO_CHAR


def test_a_long_context_gives_overlapping_windows_that_cover_it(tiny_tokenizer: Any) -> None:
    windows, context_ids, _, layout = windows_of(tiny_tokenizer, max_seq_len=24, doc_stride=6)
    assert len(context_ids) > 24 and len(windows) >= 3
    assert all(len(window) <= 24 for window in windows)
    starts = [window.context_start for window in windows]
    assert starts == [6 * k for k in range(len(windows))]
    room = windows[0].n_context
    for before, after in zip(windows, windows[1:], strict=False):
        overlap = before.n_context - 6
        assert overlap == room - 6 > 0
        tail = before.input_ids[before.context_offset + 6 : before.context_offset + before.n_context]
        assert tail == after.input_ids[after.context_offset : after.context_offset + overlap]
    last = windows[-1]
    assert last.context_start + last.n_context == len(context_ids)
    covered = set()
    for window in windows:
        covered.update(range(window.context_start, window.context_start + window.n_context))
    assert covered == set(range(len(context_ids)))


def test_every_answer_token_lies_inside_the_window_that_claims_it(tiny_tokenizer: Any) -> None:
    windows, context_ids, offsets, _ = windows_of(tiny_tokenizer, max_seq_len=24, doc_stride=6)
    first, last = answer_token_span(offsets, (CONTEXT.index(ANSWER), CONTEXT.index(ANSWER) + len(ANSWER)))
    claiming = [window for window in windows if window.has_answer]
    assert claiming, "the answer is recovered from at least one window"
    for window in windows:
        holds = window.context_start <= first and last < window.context_start + window.n_context
        assert window.has_answer == holds
        if not holds:
            assert (window.start_position, window.end_position) == (0, 0)
            continue
        s, e = window.start_position, window.end_position
        assert window.context_offset <= s <= e < window.context_offset + window.n_context
        assert window.input_ids[s : e + 1] == tuple(context_ids[first : last + 1])
        assert CONTEXT[window.char_spans[s][0] : window.char_spans[e][1]] == ANSWER


def test_no_answer_points_every_window_at_the_first_token(tiny_tokenizer: Any) -> None:
    windows, *_ = windows_of(tiny_tokenizer, answer=None)
    assert len(windows) > 1
    assert all((w.start_position, w.end_position) == (0, 0) for w in windows)


def test_span_mask_is_the_first_token_and_the_context(tiny_tokenizer: Any) -> None:
    windows, *_ = windows_of(tiny_tokenizer)
    window = windows[1]
    mask = window.span_mask()
    assert mask[0] and sum(mask) == 1 + window.n_context
    assert all(mask[window.context_offset : window.context_offset + window.n_context])


def test_question_is_cut_to_max_question_len(tiny_tokenizer: Any) -> None:
    question_ids, (context_ids, offsets) = encode(tiny_tokenizer)
    layout = PairLayout.from_tokenizer(tiny_tokenizer)
    (window, *_) = doc_windows(question_ids, context_ids, offsets, 20, 4, layout, max_question_len=2)
    assert window.context_offset == 1 + 2 + 1


@pytest.mark.parametrize(
    ("max_seq_len", "doc_stride", "problem"),
    [(9, 1, "leaves no room"), (24, 20, "would be skipped"), (24, 0, "must be >= 1")],
)
def test_impossible_window_settings_are_refused(
    tiny_tokenizer: Any, max_seq_len: int, doc_stride: int, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        windows_of(tiny_tokenizer, max_seq_len=max_seq_len, doc_stride=doc_stride)


def test_every_context_token_has_exactly_one_max_context_window(tiny_tokenizer: Any) -> None:
    windows, context_ids, *_ = windows_of(tiny_tokenizer, max_seq_len=24, doc_stride=6)
    owners: dict[int, list[int]] = {}
    for k, window in enumerate(windows):
        assert len(window.max_context) == len(window)
        for i in range(window.n_context):
            if window.max_context[window.context_offset + i]:
                owners.setdefault(window.context_start + i, []).append(k)
        outside = [
            flag for flag, span in zip(window.max_context, window.char_spans, strict=True) if span == NO_CHAR
        ]
        assert not any(outside)
    assert sorted(owners) == list(range(len(context_ids)))
    assert all(len(ks) == 1 for ks in owners.values())
    # the last context token of window 0 is also in window 1, away from its edges: window 1 owns it
    edge = windows[0].context_start + windows[0].n_context - 1
    assert owners[edge] == [1]


# --- decoding --------------------------------------------------------------------------------------------


def pointing_logits(windows: list[Window], length: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Logits that favour the gold span where a window holds it, and a weaker wrong span elsewhere."""
    starts, ends = [], []
    for window in windows:
        start, end = np.zeros(length), np.zeros(length)
        if window.has_answer:
            start[window.start_position] = end[window.end_position] = 5.0
        else:
            first = window.context_offset + 1
            start[first] = end[first + 1] = 3.0
        starts.append(start)
        ends.append(end)
    return starts, ends


def test_decoding_recovers_the_gold_answer_across_windows(tiny_tokenizer: Any) -> None:
    windows, *_ = windows_of(tiny_tokenizer)
    starts, ends = pointing_logits(windows, 32)  # padded past every window's length
    prediction = decode_example(CONTEXT, windows, starts, ends)
    assert prediction.text == ANSWER
    best = prediction.n_best[0]
    assert windows[best.window].has_answer and best.score == 10.0
    assert [c.score for c in prediction.n_best] == sorted((c.score for c in prediction.n_best), reverse=True)


def test_decoding_never_returns_an_end_before_its_start(tiny_tokenizer: Any) -> None:
    windows, *_ = windows_of(tiny_tokenizer)
    window = windows[0]
    spans, a = window.char_spans, window.context_offset
    start, end = np.zeros(len(window)), np.zeros(len(window))
    start[a + 5], end[a + 2] = 9.0, 9.0  # the best start lies after the best end: not a span
    start[a + 1] = 4.0
    prediction = decode_example(CONTEXT, [window], [start], [end])
    assert all(c.start_position <= c.end_position for c in prediction.n_best)
    best = prediction.n_best[0]
    assert (best.start_position, best.end_position, best.score) == (a + 1, a + 2, 13.0)
    assert prediction.text == CONTEXT[spans[a + 1][0] : spans[a + 2][1]] == "cat sat"


def test_decoding_keeps_spans_within_max_answer_length(tiny_tokenizer: Any) -> None:
    windows, *_ = windows_of(tiny_tokenizer)
    window = windows[0]
    spans, a = window.char_spans, window.context_offset
    start, end = np.zeros(len(window)), np.zeros(len(window))
    start[a + 1], end[a + 6], end[a + 1] = 9.0, 9.0, 1.0
    short = decode_example(CONTEXT, [window], [start], [end], max_answer_length=3)
    assert all(c.end_position - c.start_position < 3 for c in short.n_best)
    assert short.text == "cat"
    long = decode_example(CONTEXT, [window], [start], [end], max_answer_length=6)
    assert long.text == CONTEXT[spans[a + 1][0] : spans[a + 6][1]]


def test_decoding_reads_a_span_in_the_window_that_gives_its_start_most_context(tiny_tokenizer: Any) -> None:
    windows, *_ = windows_of(tiny_tokenizer, max_seq_len=24, doc_stride=6)
    first, second = windows[0], windows[1]
    token = first.context_start + first.n_context - 1  # window 0's last context token, central in window 1
    at_first = first.context_offset + token - first.context_start
    at_second = second.context_offset + token - second.context_start
    starts = [np.zeros(len(first)), np.zeros(len(second))]
    ends = [np.zeros(len(first)), np.zeros(len(second))]
    starts[0][at_first] = ends[0][at_first] = 9.0  # more sure at the edge of window 0
    starts[1][at_second] = ends[1][at_second] = 5.0
    best = decode_example(CONTEXT, [first, second], starts, ends, max_context_only=True).n_best[0]
    assert (best.window, best.start_position, best.score) == (1, at_second, 10.0)
    anywhere = decode_example(CONTEXT, [first, second], starts, ends).n_best[0]
    assert (anywhere.window, anywhere.score) == (0, 18.0)
    assert anywhere.text == best.text == CONTEXT[slice(*first.char_spans[at_first])]


def test_no_answer_wins_when_the_first_token_outscores_every_span(tiny_tokenizer: Any) -> None:
    windows, *_ = windows_of(tiny_tokenizer, answer=None)
    starts, ends = pointing_logits(windows, 32)  # best span scores 6
    for start, end in zip(starts, ends, strict=True):
        start[0] = end[0] = 4.0  # no-answer score 8
    assert decode_example(CONTEXT, windows, starts, ends, allow_no_answer=True).text == ""
    assert decode_example(CONTEXT, windows, starts, ends, allow_no_answer=False).text != ""
    raised = decode_example(CONTEXT, windows, starts, ends, allow_no_answer=True, no_answer_threshold=3.0)
    assert raised.text != "" and raised.no_answer_score == 8.0


# --- EM / F1 ---------------------------------------------------------------------------------------------


def test_normalisation_drops_case_punctuation_articles_and_spaces() -> None:
    assert normalize_answer("  The  Red, car!  ") == "red car"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theory") == "theory"  # an article only as a whole word


def test_exact_match_and_f1_by_hand() -> None:
    assert exact_match("the Red car.", ["red car"]) == 1.0
    assert exact_match("red cars", ["red car"]) == 0.0
    # prediction "red car up", gold "red car": precision 2/3, recall 1 -> F1 0.8
    assert span_f1("red car up", ["red car"]) == pytest.approx(0.8)
    # the best gold answer counts: vs "car" P=1/3 R=1 -> 0.5; vs "big red car" P=2/3 R=2/3 -> 2/3
    assert span_f1("red car up", ["car", "big red car"]) == pytest.approx(2 / 3)
    assert exact_match("car", ["red car", "car"]) == 1.0
    assert span_f1("dog", ["red car"]) == 0.0


def test_no_answer_questions_match_only_an_empty_prediction() -> None:
    assert exact_match("", [""]) == span_f1("", []) == 1.0
    assert exact_match("red car", [""]) == span_f1("red car", [""]) == 0.0
    assert span_f1("", ["red car"]) == 0.0
    assert exact_match("the", [""]) == 1.0  # normalises to empty


def test_squad_scores_average_over_the_questions() -> None:
    gold = {"q1": ["red car"], "q2": ["a dog"], "q3": [""], "q4": ["big tree"]}
    predictions = {"q1": "the red car", "q2": "dog walked", "q3": "moon"}  # q4 unanswered
    scores = squad_scores(predictions, gold)
    # EM: q1 only -> 25; F1: q1 1, q2 P=1/2 R=1 -> 2/3, q3 0, q4 0
    assert scores[SpanMetric.EXACT_MATCH] == pytest.approx(25.0)
    assert scores[SpanMetric.F1] == pytest.approx(100 * (1 + 2 / 3) / 4)
    with pytest.raises(ValueError, match="unknown question 'q9'"):
        squad_scores({"q9": "x"}, gold)


# --- head, loss, divergence ------------------------------------------------------------------------------


def tiny_encoder(seed: int = 0) -> Any:
    from transformers import BertModel

    torch.manual_seed(seed)
    return BertModel(tiny_bert_config()).eval()


def window_batch(windows: list[Window]) -> dict[str, torch.Tensor]:
    length = max(len(w) for w in windows)

    def pad(rows: list[list[Any]], value: Any) -> list[list[Any]]:
        return [row + [value] * (length - len(row)) for row in rows]

    return {
        "input_ids": torch.tensor(pad([list(w.input_ids) for w in windows], 0)),
        "token_type_ids": torch.tensor(pad([list(w.token_type_ids) for w in windows], 0)),
        "attention_mask": torch.tensor(pad([[1] * len(w) for w in windows], 0)),
        "span_mask": torch.tensor(pad([w.span_mask() for w in windows], False)),
        "positions": torch.tensor([[w.start_position, w.end_position] for w in windows]),
    }


def test_head_output_is_masked_outside_the_context(tiny_tokenizer: Any) -> None:
    windows, *_ = windows_of(tiny_tokenizer)
    windows = windows[:2] + [windows[-1]]  # the last is shorter: padding too
    batch = window_batch(windows)
    encoder, head = tiny_encoder(), SpanHead(32, 0.0)
    hidden = encoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    ).last_hidden_state
    logits = head(hidden, batch["attention_mask"], batch["token_type_ids"], span_mask=batch["span_mask"])
    assert logits.shape == (3, 2, batch["input_ids"].shape[1])
    allowed = batch["span_mask"] & batch["attention_mask"].bool()
    assert (batch["attention_mask"] == 0).any()
    floor = torch.finfo(logits.dtype).min
    assert torch.all(logits[~allowed[:, None, :].expand_as(logits)] == floor)
    assert torch.all(logits[allowed[:, None, :].expand_as(logits)] > -100)
    probabilities = logits.softmax(dim=-1)
    assert torch.all(probabilities[~allowed[:, None, :].expand_as(logits)] == 0)
    assert torch.allclose(probabilities.sum(-1), torch.ones(3, 2))


def test_head_refuses_a_mask_of_the_wrong_shape() -> None:
    head = SpanHead(32, 0.0)
    with pytest.raises(ValueError, match="span_mask"):
        head(torch.zeros(2, 5, 32), torch.ones(2, 5), None, span_mask=torch.ones(2, 4, dtype=torch.bool))


def test_loss_is_the_mean_of_start_and_end_cross_entropy() -> None:
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]])
    loss = span_loss(logits, torch.tensor([[1, 0]]))
    start = -math.log(math.exp(2) / (math.exp(1) + math.exp(2) + 1))
    end = -math.log(1 / (2 + math.exp(3)))
    assert loss.item() == pytest.approx((start + end) / 2, rel=1e-6)


def test_gradient_flows_through_the_loss_into_the_encoder(tiny_tokenizer: Any) -> None:
    windows, *_ = windows_of(tiny_tokenizer)
    batch = window_batch(windows)
    encoder, head = tiny_encoder().train(), SpanHead(32, 0.1).train()
    hidden = encoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    ).last_hidden_state
    logits = head(hidden, batch["attention_mask"], batch["token_type_ids"], span_mask=batch["span_mask"])
    loss = span_loss(logits, batch["positions"])
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    embedding_grad = encoder.get_input_embeddings().weight.grad
    assert embedding_grad is not None and embedding_grad.abs().sum() > 0
    assert head.out_proj.weight.grad is not None and head.out_proj.weight.grad.abs().sum() > 0


def sym_kl_by_hand(p_logits: list[float], q_logits: list[float]) -> float:
    p = np.exp(p_logits) / np.exp(p_logits).sum()
    q = np.exp(q_logits) / np.exp(q_logits).sum()
    return float((p * np.log(p / q)).sum() + (q * np.log(q / p)).sum())


def test_divergence_is_zero_for_identical_outputs() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 7)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[:, 5:] = False
    assert span_divergence(logits, logits.clone(), mask).item() == 0.0


def test_divergence_is_the_mean_of_start_and_end_symmetric_kl_over_real_positions() -> None:
    p = torch.tensor([[[1.0, 2.0, 0.5, 40.0], [0.0, -1.0, 1.0, -30.0]]])
    q = torch.tensor([[[0.0, 1.0, 1.5, -9.0], [2.0, 0.0, 0.0, 12.0]]])
    mask = torch.tensor([[True, True, True, False]])  # position 3 is padding: its wild logits do not count
    expected = (sym_kl_by_hand([1, 2, 0.5], [0, 1, 1.5]) + sym_kl_by_hand([0, -1, 1], [2, 0, 0])) / 2
    assert span_divergence(p, q, mask).item() == pytest.approx(expected, rel=1e-5)
    assert span_divergence(q, p, mask).item() == pytest.approx(expected, rel=1e-5)


def test_divergence_of_masked_head_outputs_is_finite_under_bf16_autocast(tiny_tokenizer: Any) -> None:
    windows, *_ = windows_of(tiny_tokenizer)
    batch = window_batch(windows)
    torch.manual_seed(1)
    hidden = torch.randn(len(windows), batch["input_ids"].shape[1], 32) * 50
    head = SpanHead(32, 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        clean = head(hidden, batch["attention_mask"], None, span_mask=batch["span_mask"])
        noisy = head(
            hidden + torch.randn_like(hidden), batch["attention_mask"], None, span_mask=batch["span_mask"]
        )
        assert clean.dtype == torch.bfloat16
        value = span_divergence(noisy, clean.detach(), batch["span_mask"] & batch["attention_mask"].bool())
        same = span_divergence(clean, clean.detach(), batch["span_mask"])
    assert value.dtype == torch.float32 and torch.isfinite(value) and value.item() > 0
    assert same.item() == 0.0


def test_divergence_is_the_generic_masked_divergence_the_objective_computes() -> None:
    """What the wiring relies on: the objective's ``divergence(adv_loss, out, target, mask)`` with the
    span mask spread over start and end is the span divergence, for every divergence in the registry."""
    from module.losses import divergence

    torch.manual_seed(3)
    p, q = torch.randn(4, 2, 9), torch.randn(4, 2, 9)
    mask = torch.rand(4, 9) > 0.3
    mask[:, 0] = True
    spread = mask[:, None, :].expand(-1, 2, -1)
    for name in ("sym_kl", "kl", "js"):
        assert span_divergence(p, q, mask, name).item() == divergence(name, p, q, mask=spread).item()


@pytest.mark.parametrize("method_name", ["smart", "fgm"])
def test_adversarial_training_runs_on_the_span_head(tiny_tokenizer: Any, method_name: str) -> None:
    """The model-agnostic adversarial API on a tiny BERT with the span head: SMART's divergence over the
    start and end distributions is positive and finite, its perturbation stays off padding, and the
    objective's gradient reaches the encoder."""
    from module.adversarial import AdversarialBatch, AdversarialSite, build_method

    windows, *_ = windows_of(tiny_tokenizer)
    batch = window_batch(windows[:2] + [windows[-1]])
    encoder, head = tiny_encoder(seed=2).train(), SpanHead(32, 0.1).train()
    site = AdversarialSite(encoder.get_input_embeddings(), heads=(head,))
    method = build_method(method_name, site)
    method.prepare(site)

    def run() -> torch.Tensor:
        hidden = encoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).last_hidden_state
        return head(hidden, batch["attention_mask"], None, span_mask=batch["span_mask"])

    real = batch["span_mask"] & batch["attention_mask"].bool()
    step = method.train_step(
        AdversarialBatch(
            run=run,
            loss=lambda logits: span_loss(logits, batch["positions"]),
            divergence=lambda logits, target: span_divergence(logits, target, real),
            token_mask=batch["attention_mask"],
        )
    )
    assert torch.isfinite(step.loss) and step.loss.item() > 0
    assert torch.isfinite(step.stats["adv_loss"]) and step.stats["adv_loss"].item() > 0
    assert step.delta is not None and torch.all(step.delta[batch["attention_mask"] == 0] == 0)
    assert step.delta[batch["attention_mask"] == 1].abs().sum() > 0
    gradient = encoder.get_input_embeddings().weight.grad
    assert gradient is not None and gradient.abs().sum() > 0


def test_flattened_outputs_make_the_generic_losses_the_span_loss_and_divergence() -> None:
    """What the wiring can rely on: with the head's ``[N, 2, L]`` flattened to ``[2N, L]`` (start and end
    rows of each window in turn), labels ``[2N]`` and the span mask repeated per row, the objective's
    generic ``task_loss('rank_cross_entropy', ...)`` is ``span_loss`` and ``divergence`` is
    ``span_divergence``: no loss hook is needed."""
    from module.losses import divergence, task_loss

    torch.manual_seed(4)
    head = SpanHead(8, 0.0)
    mask = torch.rand(3, 7) > 0.4
    mask[:, 0] = True
    hidden = torch.randn(3, 7, 8)
    logits = head(hidden, torch.ones(3, 7), None, span_mask=mask)
    other = head(hidden + 0.5 * torch.randn_like(hidden), torch.ones(3, 7), None, span_mask=mask)
    positions = torch.stack([torch.multinomial(m.float(), 2, replacement=True) for m in mask])
    positions = positions.sort(dim=1).values
    flat, rows = logits.reshape(-1, 7), mask.repeat_interleave(2, dim=0)
    generic = task_loss("rank_cross_entropy", flat, positions.reshape(-1), mask=rows)
    assert generic.item() == pytest.approx(span_loss(logits, positions).item(), rel=1e-6)
    generic_kl = divergence("sym_kl", flat, other.reshape(-1, 7), mask=rows)
    assert generic_kl.item() == pytest.approx(span_divergence(logits, other, mask).item(), rel=1e-6)


# --- windows <-> cache arrays ----------------------------------------------------------------------------


def three_questions(tokenizer: Any) -> list[list[Window]]:
    layout = PairLayout.from_tokenizer(tokenizer)
    answer = (CONTEXT.index(ANSWER), CONTEXT.index(ANSWER) + len(ANSWER))
    asked = [
        (QUESTION, CONTEXT, answer),
        ("who sat?", "the cat sat on the mat", (0, 7)),
        ("why?", CONTEXT, None),
    ]
    return encode_questions(tokenizer, layout, asked, max_seq_len=24, doc_stride=6, batch_size=2)


def test_encode_questions_is_doc_windows_of_each_question(tiny_tokenizer: Any) -> None:
    per_question = three_questions(tiny_tokenizer)
    assert per_question[0] == windows_of(tiny_tokenizer)[0]
    assert len(per_question[2]) > 1 and not any(w.has_answer for w in per_question[2])
    assert len(per_question[1]) == 1  # a short context fits one window
    assert tokenize_texts(tiny_tokenizer, ["the cat", "a dog"]) == [
        tokenize_with_offsets(tiny_tokenizer, "the cat"),
        tokenize_with_offsets(tiny_tokenizer, "a dog"),
    ]


def test_windows_survive_the_flat_arrays(tiny_tokenizer: Any) -> None:
    per_question = three_questions(tiny_tokenizer)
    arrays = pack_windows(per_question)
    flat = [w for question in per_question for w in question]
    assert len(arrays) == len(flat) and [arrays.window(i) for i in range(len(flat))] == flat
    groups = arrays.by_example()
    assert [len(g) for g in groups] == [len(q) for q in per_question]
    assert [arrays.window(int(i)) for i in groups[2]] == per_question[2]
    assert all(a.ndim == 1 for a in (*arrays.extras().values(), arrays.input_ids, arrays.start_positions))
    assert (arrays.char_starts >= 0).sum() == sum(w.n_context for w in flat)


def test_unlabelled_windows_carry_minus_one(tiny_tokenizer: Any) -> None:
    arrays = pack_windows(three_questions(tiny_tokenizer), labelled=False)
    assert (arrays.start_positions == UNLABELLED).all() and (arrays.end_positions == UNLABELLED).all()
    assert not arrays.window(0).has_answer


def test_the_arrays_make_a_valid_cache_split(tiny_tokenizer: Any, tmp_path: Any) -> None:
    from data_utils.cache import EncodedSplit, load_split, write_split

    arrays = pack_windows(three_questions(tiny_tokenizer))
    n = len(arrays)
    split = EncodedSplit(
        input_ids=arrays.input_ids,
        seq_offsets=arrays.seq_offsets,
        row_offsets=np.arange(n + 1, dtype=np.int64),
        labels=arrays.start_positions,
        uids=np.array([f"w{i}" for i in range(n)]),
        token_type_ids=arrays.token_type_ids,
        meta={"task": "qa", "split": "dev"},
        extras=arrays.extras(),
    )
    write_split(tmp_path / "qa_dev", split)
    loaded = load_split(tmp_path / "qa_dev")
    for name, array in arrays.extras().items():
        assert np.array_equal(loaded.extras[name], array), name
