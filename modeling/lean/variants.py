"""Imports every lean variant, which registers it with :func:`~modeling.lean.mode.to_lean`."""

from .backbone import LeanAttention, LeanBlock, LeanLTRM, LeanPatchEmbed, LeanRouter
from .decoder import LeanDetailCapture
from .meta_arch import LeanMEMatte

__all__ = [
    "LeanAttention",
    "LeanBlock",
    "LeanDetailCapture",
    "LeanLTRM",
    "LeanMEMatte",
    "LeanPatchEmbed",
    "LeanRouter",
]
