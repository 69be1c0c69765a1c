"""The ``--propagate`` choices: how the frames without guidance get their trimaps.

- ``flow`` (:class:`~predictor.video.propagation.FlowPropagator`): the last keyframe's mask
  carried by dense optical flow; no weights. Prompts on the first frame become its mask with the
  image segmenter (:func:`predictor.segmenter.load_segmenter`).
- ``sam2`` (:class:`~predictor.video.sam2_propagation.Sam2Propagator`): SAM 2's video model
  (:func:`~predictor.video.sam2_propagation.load_video_segmenter`); the default when a
  ``--segmenter`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from predictor.segmenter import load_segmenter
from predictor.video.propagation import FlowPropagator, Propagator
from predictor.video.sam2_propagation import Sam2Propagator, load_video_segmenter

__all__ = [
    "DEFAULT_PROPAGATOR",
    "PROPAGATORS",
    "SEGMENTER_PROPAGATOR",
    "load_propagation_segmenter",
]

#: ``--propagate`` choices: name -> the class, built with the unknown width and the segmenter.
PROPAGATORS: dict[str, type[Propagator]] = {"flow": FlowPropagator, "sam2": Sam2Propagator}
DEFAULT_PROPAGATOR = "flow"
#: The default with ``--segmenter``.
SEGMENTER_PROPAGATOR = "sam2"
# What each propagator loads ``--segmenter`` as.
_LOADERS: dict[str, Callable[..., Any]] = {"flow": load_segmenter, "sam2": load_video_segmenter}


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
    return _LOADERS[propagate](source, device=device)
