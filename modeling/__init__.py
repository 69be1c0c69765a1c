"""MEMatte model: routed ViT backbone, detail-capture decoder, criterion, meta-architecture.

``modeling.lean`` holds the memory-lean inference variants of these classes; importing this
package registers them (``MEMatte(lean_inference=True)`` swaps them in).
"""

from .backbone import LTRM, Router, ViT
from .criterion import MattingCriterion
from .decoder import DetailCapture
from .lean import variants  # noqa: F401 (registers the lean variants)
from .meta_arch import MEMatte

__all__ = ["LTRM", "DetailCapture", "MEMatte", "MattingCriterion", "Router", "ViT"]
