"""Adversarial training on the output of any module (model-agnostic): SMART and the family, one registry.

``build_method(name, site, **hyper_parameters)`` -> an ``AdversarialMethod`` on an ``AdversarialSite`` (the
perturbed target, YOPO's first layer, the heads ``method.prepare(site)`` may change) or on a bare target
module; ``method.prepare(site)`` before training; describe each batch with
``AdversarialBatch`` and call ``method.train_step(batch)`` (or ``method(batch)`` and backpropagate yourself
when ``not method.owns_backward``). See ``module.adversarial.base`` for the contract, and
``register_method`` (``module.adversarial.registry``) to add a method of your own.
"""

from module.adversarial.base import AdversarialBatch, AdversarialMethod, AdversarialStep, Backward
from module.adversarial.free import YOPO, FreeAT, FreeATConfig, FreeLB, FreeLBConfig, YOPOConfig
from module.adversarial.gradient_attacks import FGM, FGSM, PGD, FGMConfig, FGSMConfig, PGDConfig
from module.adversarial.hooks import RngSnapshot, add_to_output, capture_output
from module.adversarial.names import AdversarialMethodName
from module.adversarial.norms import NormLevel, PNorm, Radius, norm, normalize, project
from module.adversarial.registry import (
    METHODS,
    MethodName,
    MethodSpec,
    build_method,
    method_names,
    method_parameters,
    method_spec,
    register_method,
    unregister_method,
)
from module.adversarial.section import AdversarialConfig, parameter_types
from module.adversarial.site import AdversarialSite, MissingSitePart, SitePart
from module.adversarial.smart import AdversarialResult, Divergence, SmartConfig, SmartPerturbation
from module.adversarial.virtual import (
    ALUM,
    R3F,
    R4F,
    ALUMConfig,
    NoiseType,
    R3FConfig,
    RDrop,
    RDropConfig,
    Smart,
    is_spectrally_normalized,
    spectral_normalize,
)

__all__ = [
    "ALUM",
    "ALUMConfig",
    "FGM",
    "FGMConfig",
    "FGSM",
    "FGSMConfig",
    "METHODS",
    "PGD",
    "PGDConfig",
    "R3F",
    "R3FConfig",
    "R4F",
    "RDrop",
    "RDropConfig",
    "Radius",
    "YOPO",
    "YOPOConfig",
    "AdversarialBatch",
    "AdversarialConfig",
    "AdversarialMethod",
    "AdversarialMethodName",
    "AdversarialResult",
    "AdversarialSite",
    "AdversarialStep",
    "Backward",
    "Divergence",
    "FreeAT",
    "FreeATConfig",
    "FreeLB",
    "FreeLBConfig",
    "MethodName",
    "MethodSpec",
    "MissingSitePart",
    "NoiseType",
    "NormLevel",
    "PNorm",
    "RngSnapshot",
    "Smart",
    "SmartConfig",
    "SitePart",
    "SmartPerturbation",
    "add_to_output",
    "build_method",
    "capture_output",
    "is_spectrally_normalized",
    "method_names",
    "method_parameters",
    "method_spec",
    "norm",
    "normalize",
    "parameter_types",
    "project",
    "register_method",
    "spectral_normalize",
    "unregister_method",
]
