"""The registry of adversarial methods: one entry per method, keyed by ``AdversarialMethodName``.

``build_method("freelb", target, k=3)`` builds a method with its paper defaults and the given overrides;
``method_parameters("freelb")`` lists the hyper-parameters it takes (its config's fields).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from module.adversarial.base import AdversarialMethod
from module.adversarial.free import YOPO, FreeAT, FreeATConfig, FreeLB, FreeLBConfig, YOPOConfig
from module.adversarial.gradient_attacks import FGM, FGSM, PGD, FGMConfig, FGSMConfig, PGDConfig
from module.adversarial.names import AdversarialMethodName
from module.adversarial.smart import SmartConfig
from module.adversarial.virtual import ALUM, R3F, R4F, ALUMConfig, R3FConfig, RDrop, RDropConfig, Smart

__all__ = ["METHODS", "MethodSpec", "build_method", "method_parameters"]


@dataclass(frozen=True)
class MethodSpec:
    name: AdversarialMethodName
    method: type[AdversarialMethod]
    config: type[Any]  # a frozen dataclass of hyper-parameters with the paper's defaults
    summary: str

    @property
    def owns_backward(self) -> bool:
        return self.method.owns_backward


def _specs(*specs: MethodSpec) -> Mapping[AdversarialMethodName, MethodSpec]:
    return MappingProxyType({spec.name: spec for spec in specs})


METHODS: Mapping[AdversarialMethodName, MethodSpec] = _specs(
    MethodSpec(
        AdversarialMethodName.SMART, Smart, SmartConfig, "virtual adversarial, sym-KL, + Bregman step"
    ),
    MethodSpec(
        AdversarialMethodName.ALUM, ALUM, ALUMConfig, "virtual adversarial (SMART's loop), no Bregman"
    ),
    MethodSpec(AdversarialMethodName.R3F, R3F, R3FConfig, "random noise, symmetric KL, no ascent"),
    MethodSpec(AdversarialMethodName.R4F, R4F, R3FConfig, "R3F + spectral-normalised classification head"),
    MethodSpec(AdversarialMethodName.FGSM, FGSM, FGSMConfig, "one signed gradient step on the task loss"),
    MethodSpec(AdversarialMethodName.FGM, FGM, FGMConfig, "one l2-normalised gradient step on the task loss"),
    MethodSpec(AdversarialMethodName.PGD, PGD, PGDConfig, "K projected gradient steps on the task loss"),
    MethodSpec(AdversarialMethodName.FREEAT, FreeAT, FreeATConfig, "m replays per batch, one update each"),
    MethodSpec(AdversarialMethodName.YOPO, YOPO, YOPOConfig, "m full passes, n first-layer-only updates"),
    MethodSpec(AdversarialMethodName.FREELB, FreeLB, FreeLBConfig, "K ascent steps, gradients averaged"),
    MethodSpec(
        AdversarialMethodName.RDROP, RDrop, RDropConfig, "two dropout passes made consistent, no perturbation"
    ),
)


def method_parameters(name: AdversarialMethodName | str) -> tuple[str, ...]:
    """The hyper-parameter names ``name``'s config takes."""
    return tuple(item.name for item in dataclasses.fields(METHODS[AdversarialMethodName(name)].config))


def build_method(
    name: AdversarialMethodName | str,
    target: nn.Module,
    *,
    first_layer: nn.Module | None = None,
    **parameters: Any,
) -> AdversarialMethod:
    """The method ``name`` on ``target``'s output, with its defaults overridden by ``parameters``.

    ``first_layer`` is YOPO's (the module whose output the co-state is taken at; default ``target``).
    Raises ``ValueError`` for a parameter the method does not take (naming the ones it does).
    """
    spec = METHODS[AdversarialMethodName(name)]
    known = method_parameters(spec.name)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ValueError(
            f"{spec.name} takes no parameter {unknown[0]!r} (its parameters: {', '.join(known)})"
        )
    config = spec.config(**parameters)
    if spec.method is YOPO:
        return YOPO(target, config, first_layer=first_layer)
    return spec.method(target, config)  # type: ignore[call-arg]
