"""A run's ``adversarial:`` section: which registered method, and the hyper-parameters given for it.

The section's keys are the method's config fields (``method_parameters``); only the ones given are kept, so
that the rest take the method's paper defaults, a pre-training task takes the method's pre-training defaults
(``MethodSpec.pretraining``) for the ones not given, and a task definition can override them per task.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from torch import nn

from module.adversarial.base import AdversarialMethod
from module.adversarial.registry import MethodName, build_method, method_names, method_spec
from module.adversarial.site import AdversarialSite

__all__ = ["AdversarialConfig", "parameter_types"]


def parameter_types(method: MethodName | None = None) -> dict[str, Any]:
    """``{parameter: type hint}`` of ``method``'s config, or of every registered method's (the union, first
    method's hint first) when ``method`` is None: what the run's flags offer."""
    names = method_names() if method is None else (str(method),)
    found: dict[str, Any] = {}
    for name in names:
        config = method_spec(name).config
        hints = typing.get_type_hints(config)
        for item in dataclasses.fields(config):
            found.setdefault(item.name, hints[item.name])
    return found


def _coerce(value: Any, expected: Any) -> Any:
    """An enum's value as the enum, an int as the float a float field wants; anything else as it is."""
    if not isinstance(expected, type):
        return value
    if issubclass(expected, Enum):
        return expected(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass(frozen=True)
class AdversarialConfig:
    """``method`` None: no adversarial training. ``parameters``: the hyper-parameters given, by the names of
    the method's config fields (enum values are converted to their enums).

    Checked on construction (``ValueError``): a parameter without a method, a parameter the method does not
    take (naming the ones it does), a NaN or an infinite value (only ``epsilon`` may be ``inf``: no bound),
    and whatever the method's own config refuses.
    """

    method: MethodName | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = dict(self.parameters)
        if self.method is None:
            if given:
                raise ValueError(f"parameter '{next(iter(given))}' needs a method")
            object.__setattr__(self, "parameters", {})
            return
        spec = method_spec(self.method)
        known = parameter_types(spec.name)
        for name, value in given.items():
            if name not in known:
                raise ValueError(
                    f"method {spec.name} takes no parameter '{name}' (it takes {', '.join(known)})"
                )
            given[name] = _coerce(value, known[name])
            if isinstance(given[name], float) and (
                math.isnan(given[name]) or (math.isinf(given[name]) and name != "epsilon")
            ):
                raise ValueError(f"parameter '{name}' must be a finite number, got {given[name]}")
        spec.config(**given)  # the method's own checks
        object.__setattr__(self, "method", spec.name)
        object.__setattr__(self, "parameters", given)

    @property
    def enabled(self) -> bool:
        return self.method is not None

    def parameters_for(
        self, overrides: Mapping[str, Any] | None = None, *, pretraining: bool = False
    ) -> dict[str, Any]:
        """The parameters to build the method with: the given ones, then ``overrides`` (a task's; each must be
        one the method takes); with ``pretraining``, the method's pre-training defaults under both."""
        if self.method is None:
            raise ValueError("no adversarial method")
        parameters = {**self.parameters, **(overrides or {})}
        if pretraining:
            parameters = {**method_spec(self.method).pretraining, **parameters}
        return parameters

    def build(
        self,
        site: AdversarialSite | nn.Module,
        overrides: Mapping[str, Any] | None = None,
        *,
        pretraining: bool = False,
    ) -> AdversarialMethod:
        """The method on ``site`` (see ``parameters_for``)."""
        assert self.method is not None, "build() needs a method"
        return build_method(self.method, site, **self.parameters_for(overrides, pretraining=pretraining))
