"""Console scripts of the installed package (``pyproject.toml``'s ``[project.scripts]``).

``predict.py`` and ``prepro_std.py`` return their exit status and are declared as they are;
``train.py``'s ``main`` returns the run's results (for callers in Python), which a console script would
print and turn into exit status 1, so its script goes through ``train`` here.
"""

from __future__ import annotations

__all__ = ["train"]


def train(argv: list[str] | None = None) -> int:
    """``smart-mtdnn-train``: ``train.py``'s ``main``; exit status 0 once training has finished."""
    import train as train_cli  # the top-level CLI module (a py-module of the distribution)

    train_cli.main(argv)
    return 0
