"""Closed sets used by task definitions, and a forgiving parser for their spellings.

Values are our lowercase snake_case names. Parsing also accepts mt-dnn's published spellings
(``Classification``, ``PremiseAndOneHypothesis``, ``CeCriterion``) so its task files load unchanged.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TypeVar


class TaskType(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    RANKING = "ranking"
    # Masked language modelling on raw text (continued pre-training); mt-dnn's spelling MaskLM parses too.
    MASK_LM = "mask_lm"


class DataFormat(StrEnum):
    PREMISE_ONLY = "premise_only"
    PREMISE_AND_ONE_HYPOTHESIS = "premise_and_one_hypothesis"
    PREMISE_AND_MULTI_HYPOTHESIS = "premise_and_multi_hypothesis"


class HeadType(StrEnum):
    LINEAR = "linear"
    SAN = "san"


class LossName(StrEnum):
    """Names of the losses a task definition may ask for (implemented in ``module/losses.py``)."""

    CROSS_ENTROPY = "cross_entropy"
    MSE = "mse"
    RANK_CROSS_ENTROPY = "rank_cross_entropy"
    KL = "kl"
    SYM_KL = "sym_kl"
    JS = "js"


# mt-dnn's criterion class names, lower-cased.
LOSS_ALIASES: dict[str, LossName] = {
    "cecriterion": LossName.CROSS_ENTROPY,
    "ce": LossName.CROSS_ENTROPY,
    "msecriterion": LossName.MSE,
    "rankcecriterion": LossName.RANK_CROSS_ENTROPY,
    "klcriterion": LossName.KL,
    "symklcriterion": LossName.SYM_KL,
    "jscriterion": LossName.JS,
}

E = TypeVar("E", bound=StrEnum)

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def normalise_spelling(value: str) -> str:
    """``PremiseAndOneHypothesis`` -> ``premise_and_one_hypothesis``; ``Premise-Only`` -> ``premise_only``."""
    return _CAMEL_BOUNDARY.sub("_", value.strip()).replace("-", "_").replace(" ", "_").lower()


def parse_enum(enum_cls: type[E], value: object, aliases: dict[str, E] | None = None) -> E:
    """Parse ``value`` into ``enum_cls``, accepting our spelling, CamelCase and ``aliases``.

    Raises ``ValueError`` whose message lists the accepted values.
    """
    if isinstance(value, str):
        if value in enum_cls._value2member_map_:
            return enum_cls(value)
        key = normalise_spelling(value)
        if key in enum_cls._value2member_map_:
            return enum_cls(key)
        if aliases:
            for candidate in (value.strip().lower(), key, key.replace("_", "")):
                if candidate in aliases:
                    return aliases[candidate]
    accepted = ", ".join(member.value for member in enum_cls)
    raise ValueError(f"unknown value {value!r} (expected one of: {accepted})")
