"""The ``--propagate`` choices: how the frames without guidance get their trimaps.

- ``flow`` (:class:`~predictor.video.propagation.FlowPropagator`): the last keyframe's mask
  carried by dense optical flow; no weights. Prompts on the first frame become its mask with the
  image segmenter (:func:`predictor.segmenter.load_segmenter`).
- ``sam2`` (:class:`~predictor.video.sam2_propagation.Sam2Propagator`): SAM 2's video model
  (:func:`~predictor.video.sam2_propagation.load_video_segmenter`); the default when a
  ``--segmenter`` is given.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from predictor.video.propagation import Propagator

__all__ = [
    "DEFAULT_PROPAGATOR",
    "PROPAGATORS",
    "SEGMENTER_PROPAGATOR",
    "load_propagation_segmenter",
    "propagator_class",
]

#: ``--propagate`` choices: name -> ``module:class`` of the propagator, built with the unknown
#: width and the segmenter. Imported on use: ``sam2`` needs PyTorch and transformers, which a
#: run of the onnxruntime predictor with ``flow`` does not.
PROPAGATORS: dict[str, str] = {
    "flow": "predictor.video.propagation:FlowPropagator",
    "sam2": "predictor.video.sam2_propagation:Sam2Propagator",
}
DEFAULT_PROPAGATOR = "flow"
#: The default with ``--segmenter``.
SEGMENTER_PROPAGATOR = "sam2"
# What each propagator loads ``--segmenter`` as (``module:function``).
_LOADERS = {
    "flow": "predictor.segmenter:load_segmenter",
    "sam2": "predictor.video.sam2_propagation:load_video_segmenter",
}


def _imported(where: str) -> Any:
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


def propagator_class(propagate: str) -> type[Propagator]:
    """The class of the ``--propagate`` choice ``propagate`` (imported now)."""
    return _imported(PROPAGATORS[propagate])


def load_propagation_segmenter(
    propagate: str, source: str | Path, device: str | torch.device
) -> Any:
    """``--segmenter`` loaded as the propagator ``propagate`` uses it: the image segmenter
    (:class:`predictor.segmenter.Segmenter`) for ``flow``, SAM 2's video model
    (:class:`~predictor.video.sam2_propagation.VideoSegmenter`) for ``sam2``.

    Raises:
        ValueError: see :func:`predictor.segmenter.load_segmenter` and
            :func:`~predictor.video.sam2_propagation.load_video_segmenter`.
    """
    return _imported(_LOADERS[propagate])(source, device=device)
