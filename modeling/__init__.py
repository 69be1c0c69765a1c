"""MEMatte model: routed ViT backbone, detail-capture decoder, criterion, meta-architecture."""

from .backbone import LTRM, Router, ViT
from .criterion import MattingCriterion
from .decoder import DetailCapture
from .meta_arch import MEMatte

__all__ = ["LTRM", "DetailCapture", "MEMatte", "MattingCriterion", "Router", "ViT"]
