"""The names of the adversarial methods (the registry's keys and ``--adv_method``'s choices)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["AdversarialMethodName"]


class AdversarialMethodName(StrEnum):
    SMART = "smart"
    ALUM = "alum"
    R3F = "r3f"
    R4F = "r4f"
    FGSM = "fgsm"
    FGM = "fgm"
    PGD = "pgd"
    FREEAT = "freeat"
    YOPO = "yopo"
    FREELB = "freelb"
    RDROP = "rdrop"
