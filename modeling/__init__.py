"""MEMatte model: routed ViT backbone, detail-capture decoder, criterion, meta-architecture.

``modeling.lean`` holds the memory-lean inference variants of these classes
(``MEMatte(lean_inference=True)`` swaps them in). The names below are imported on first use, so
that the pure-Python modules (``modeling.patches``, ``modeling.lean.cone``, ``.blocks``,
``.block_decode``) import without PyTorch: the onnxruntime predictor uses them.
"""

from utils.lazy import lazy_exports

__all__ = ["LTRM", "DetailCapture", "MEMatte", "MattingCriterion", "Router", "ViT"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "LTRM": "modeling.backbone",
        "Router": "modeling.backbone",
        "ViT": "modeling.backbone",
        "MattingCriterion": "modeling.criterion",
        "DetailCapture": "modeling.decoder",
        "MEMatte": "modeling.meta_arch",
    },
)
