"""Adversarial regularisation on the output of any module (model-agnostic): SMART and its building blocks."""

from module.adversarial.hooks import RngSnapshot, add_to_output, capture_output
from module.adversarial.norms import NormLevel, PNorm, norm, normalize, project
from module.adversarial.smart import AdversarialResult, Divergence, SmartConfig, SmartPerturbation

__all__ = [
    "AdversarialResult",
    "Divergence",
    "NormLevel",
    "PNorm",
    "RngSnapshot",
    "SmartConfig",
    "SmartPerturbation",
    "add_to_output",
    "capture_output",
    "norm",
    "normalize",
    "project",
]
