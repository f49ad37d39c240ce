"""Where a method acts on a model: the one object every caller builds and every method reads.

``AdversarialSite(target, first_layer, heads)``: ``target`` is the module whose output is perturbed (an HF
encoder's word embeddings); ``first_layer`` the block YOPO reruns alone for its cheap updates (it contains
the target or is it, runs once per forward and returns one tensor: an HF encoder's embeddings block);
``heads`` the task heads a method may change before training (R4F spectrally normalises them). A method
that needs a part the site lacks raises ``MissingSitePart``, which names the part, so a plug-in can point at
its own argument for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from torch import nn

__all__ = ["AdversarialSite", "MissingSitePart", "SitePart", "as_site"]


class SitePart(StrEnum):
    FIRST_LAYER = "first_layer"
    HEADS = "heads"


@dataclass(frozen=True)
class AdversarialSite:
    target: nn.Module
    first_layer: nn.Module | None = None
    heads: tuple[nn.Module, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))


class MissingSitePart(ValueError):
    """A method needs a part of the site that it was not given."""

    def __init__(self, method: str, part: SitePart, why: str) -> None:
        super().__init__(f"{method}: the site has no {part.value} ({why})")
        self.method = method
        self.part = part


def as_site(site: AdversarialSite | nn.Module, target: nn.Module) -> AdversarialSite:
    """``site`` as it is, or - the plain API's ``method.prepare(head)`` - a site on ``target`` with that
    one head."""
    return site if isinstance(site, AdversarialSite) else AdversarialSite(target, heads=(site,))
