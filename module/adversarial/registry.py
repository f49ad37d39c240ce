"""The registry of adversarial methods: the built-in ones (read-only) and the ones users register.

``build_method("freelb", site, k=3)`` builds a method on an ``AdversarialSite`` (or, the plain API, on a
bare target module) with its paper defaults and the given overrides;
``method_parameters("freelb")`` lists the hyper-parameters it takes (its config's fields). ``METHODS`` holds
the built-in methods, keyed by ``AdversarialMethodName`` (what ``train.py``'s ``--adv_method`` offers).

A method of your own joins with ``register_method(MethodSpec("mine", MyMethod, MyConfig, "summary"))``;
its name is a plain lowercase string (``AdversarialMethodName`` is the closed set of built-in names), and
``build_method``, ``method_parameters`` and the HF / fastai plug-ins take it like a built-in name.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from module.adversarial.base import AdversarialMethod
from module.adversarial.free import YOPO, FreeAT, FreeATConfig, FreeLB, FreeLBConfig, YOPOConfig
from module.adversarial.gradient_attacks import FGM, FGSM, PGD, FGMConfig, FGSMConfig, PGDConfig
from module.adversarial.names import AdversarialMethodName
from module.adversarial.site import AdversarialSite
from module.adversarial.smart import SmartConfig
from module.adversarial.virtual import ALUM, R3F, R4F, ALUMConfig, R3FConfig, RDrop, RDropConfig, Smart

__all__ = [
    "METHODS",
    "MethodName",
    "MethodSpec",
    "build_method",
    "method_names",
    "method_parameters",
    "method_spec",
    "register_method",
    "unregister_method",
]

# A built-in name, or the name of a registered method of your own.
MethodName = AdversarialMethodName | str
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


@dataclass(frozen=True)
class MethodSpec:
    name: MethodName
    method: type[AdversarialMethod]
    config: type[Any]  # a frozen dataclass of hyper-parameters with the paper's defaults
    summary: str
    # The defaults that differ when the method (continues to) pre-train a masked LM (ALUM's alpha of 10);
    # the caller knows which tasks pre-train, and parameters it was given win over these.
    pretraining: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def owns_backward(self) -> bool:
        return self.method.owns_backward


def _specs(*specs: MethodSpec) -> Mapping[AdversarialMethodName, MethodSpec]:
    return MappingProxyType({AdversarialMethodName(spec.name): spec for spec in specs})


METHODS: Mapping[AdversarialMethodName, MethodSpec] = _specs(
    MethodSpec(
        AdversarialMethodName.SMART, Smart, SmartConfig, "virtual adversarial, sym-KL, + Bregman step"
    ),
    MethodSpec(
        AdversarialMethodName.ALUM,
        ALUM,
        ALUMConfig,
        "virtual adversarial (SMART's loop), no Bregman",
        MappingProxyType({"alpha": ALUMConfig.for_pretraining().alpha}),
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


class _UserMethods(Mapping[str, MethodSpec]):
    """The methods registered at run time (the one mutable part of the registry; built-ins never change)."""

    def __init__(self) -> None:
        self._specs: dict[str, MethodSpec] = {}

    def __getitem__(self, name: str) -> MethodSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def add(self, spec: MethodSpec) -> None:
        self._specs[str(spec.name)] = spec

    def remove(self, name: str) -> None:
        del self._specs[name]


_USER_METHODS = _UserMethods()


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method of your own to the registry (returns ``spec``).

    ``spec.name`` must be a new lowercase name (letters, digits, ``_``, ``-``) equal to ``spec.method.name``;
    ``spec.config`` a dataclass whose fields are the hyper-parameters, all with defaults. Raises
    ``ValueError`` for a built-in or already registered name (``unregister_method`` first to replace it).
    """
    name = str(spec.name)
    if not _NAME.match(name):
        raise ValueError(
            f"method name {name!r}: use lowercase letters, digits, '_' or '-', starting with a letter"
        )
    if name in METHODS:
        raise ValueError(f"{name!r} is a built-in method; built-in entries cannot be replaced")
    if name in _USER_METHODS:
        raise ValueError(f"a method {name!r} is already registered (unregister_method({name!r}) first)")
    if not (isinstance(spec.method, type) and issubclass(spec.method, AdversarialMethod)):
        raise ValueError(f"method {name!r}: {spec.method!r} is not an AdversarialMethod subclass")
    if str(getattr(spec.method, "name", "")) != name:
        raise ValueError(
            f"method {name!r}: {spec.method.__name__}.name is {getattr(spec.method, 'name', None)!r}"
        )
    if not dataclasses.is_dataclass(spec.config):
        raise ValueError(f"method {name!r}: its config {spec.config!r} must be a dataclass")
    unknown = sorted(set(spec.pretraining) - {item.name for item in dataclasses.fields(spec.config)})
    if unknown:
        raise ValueError(f"method {name!r}: its pretraining defaults name no config field {unknown[0]!r}")
    _USER_METHODS.add(spec)
    return spec


def unregister_method(name: str) -> MethodSpec:
    """Remove a method registered with ``register_method`` (built-in ones stay); returns its spec."""
    if name in METHODS:
        raise ValueError(f"{name!r} is a built-in method; built-in entries cannot be removed")
    if name not in _USER_METHODS:
        raise ValueError(f"no registered method {name!r}")
    spec = _USER_METHODS[name]
    _USER_METHODS.remove(name)
    return spec


def method_names() -> tuple[str, ...]:
    """Every name ``build_method`` takes: the built-in ones, then the registered ones."""
    return tuple(str(name) for name in METHODS) + tuple(_USER_METHODS)


def method_spec(name: MethodName) -> MethodSpec:
    """The registry entry of ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    key = str(name)
    if key in METHODS:
        return METHODS[AdversarialMethodName(key)]
    if key in _USER_METHODS:
        return _USER_METHODS[key]
    names = method_names()
    close = difflib.get_close_matches(key.lower(), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown adversarial method {key!r}{hint}; the methods: {', '.join(names)}")


def method_parameters(name: MethodName) -> tuple[str, ...]:
    """The hyper-parameter names ``name``'s config takes."""
    return tuple(item.name for item in dataclasses.fields(method_spec(name).config))


def build_method(
    name: MethodName,
    site: AdversarialSite | nn.Module,
    *,
    first_layer: nn.Module | None = None,
    **parameters: Any,
) -> AdversarialMethod:
    """The method ``name`` on ``site``, with its defaults overridden by ``parameters``.

    ``site``: an ``AdversarialSite``, or - the plain API - the target module itself, which stands for
    ``AdversarialSite(target, first_layer or target)``: YOPO's first layer (the module whose output the
    co-state is taken at; for an HF encoder its embeddings block) then defaults to the target, where its n
    inner steps reduce to n steps along one fixed gradient; ``first_layer`` goes with a bare target only.
    Raises ``ValueError`` for an unknown name (listing the known ones), a parameter the method does not take
    (naming the ones it does), or a site without a part the method needs (``MissingSitePart``).
    """
    spec = method_spec(name)
    known = method_parameters(spec.name)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ValueError(
            f"{spec.name} takes no parameter {unknown[0]!r} (its parameters: {', '.join(known)})"
        )
    if not isinstance(site, AdversarialSite):
        site = AdversarialSite(site, first_layer if first_layer is not None else site)
    elif first_layer is not None:
        raise ValueError("build_method: give first_layer in the AdversarialSite, not beside it")
    return spec.method.from_site(site, spec.config(**parameters))
