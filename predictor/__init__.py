"""The inference side: everything that runs a trained MEMatte on images.

- :class:`MattingPredictor` (``predictor.matting``): an image and a trimap (or a rough mask) in,
  alpha out, on the official protocol; :class:`OnnxMattingPredictor`
  (``predictor.onnx_predictor``): the same call on an exported deployment under onnxruntime,
  without PyTorch; ``predictor.prediction``: the call and results they share.
- ``predictor.inputs`` (what the predictors accept), ``predictor.weights`` (the inference model
  of a config and its checkpoint), ``predictor.token_budget`` (the automatic token cap).
- :func:`estimate_foreground` (``predictor.foreground``): foreground colours for cutouts;
  ``predictor.outputs``: the files a run writes (:func:`alpha_to_uint8`, the official PNG).
- ``predictor.prompts`` (box and click prompts) and ``predictor.segmenter`` (the SAM-family front
  end that turns them into a mask, for the predictors' ``box=`` / ``points=``).
- ``predictor.runner`` (with ``predictor.items``): folder and sharded runs of ``inference.py``;
  ``predictor.video``: clips (``inference.py --video``); ``predictor.onnx_graph``: the exported
  deployment; ``predictor.session``, ``predictor.web_app`` and ``predictor.web_prompt`` (its
  Prompt tab): the web demo;
  ``predictor.profiling``: FLOPs and timings for the benchmark tools.

The names below are imported on first use, so that ``import predictor.onnx_predictor`` does not
load the PyTorch predictor.
"""

from utils.lazy import lazy_exports

__all__ = [
    "MattingPredictor",
    "OnnxMattingPredictor",
    "alpha_to_uint8",
    "estimate_foreground",
    "foreground_to_uint8",
    "trimap_from_mask",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "MattingPredictor": "predictor.matting",
        "OnnxMattingPredictor": "predictor.onnx_predictor",
        "alpha_to_uint8": "predictor.outputs",
        "estimate_foreground": "predictor.foreground",
        "foreground_to_uint8": "predictor.foreground",
        "trimap_from_mask": "data.trimap",
    },
)
