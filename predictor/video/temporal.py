"""Temporal stability (``--temporal``): ``off`` keeps each frame's matte as the image predictor
gives it; ``flow`` blends each frame's alpha, in its trimap's unknown band, with the previous
frame's written alpha carried along the optical flow.

The blend weight of a pixel is ``strength`` where the pixel's flow passes the forward-backward
test and its colour matches the previous frame's at the carried position, falling linearly to 0
as the colour difference reaches ``colour_tolerance``; 0 elsewhere. Moving edges, occlusions and
newly visible pixels (where flow fails or the colours differ) keep the current frame's alpha, so
they are not smeared; where the scene is still or tracked well, the per-frame flicker is
averaged out (the previous output is itself blended, so the average is exponential over the past
frames). Known pixels (trimap 0 or 255) keep their forced values.

The previous frame's *written* alpha (its PNG levels) is what is carried, so a resumed run, which
reads it back, continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np

from data.trimap import TRIMAP_UNKNOWN
from predictor.video.flow import FlowPair, warp

__all__ = [
    "DEFAULT_COLOUR_TOLERANCE",
    "DEFAULT_STRENGTH",
    "TEMPORAL_MODES",
    "temporal_blend",
    "temporal_weight",
]

TEMPORAL_MODES = ("off", "flow")
# The share of the carried previous alpha where the flow and colours agree.
DEFAULT_STRENGTH = 0.8
# Mean absolute RGB difference (in [0, 1]) at which the weight reaches 0.
DEFAULT_COLOUR_TOLERANCE = 0.06


def _unit(image: np.ndarray) -> np.ndarray:
    """RGB levels (uint8 or uint16) as float32 in [0, 1]."""
    return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)


def temporal_weight(
    image: np.ndarray,
    previous_image: np.ndarray,
    flow: FlowPair,
    strength: float = DEFAULT_STRENGTH,
    colour_tolerance: float = DEFAULT_COLOUR_TOLERANCE,
) -> np.ndarray:
    """The weight of the carried previous alpha at each pixel (see the module docstring).

    Args:
        image: ``[H, W, 3]`` RGB levels of frame t.
        previous_image: ``[H, W, 3]`` RGB levels of frame t-1.
        flow: the flow between them.
        strength: the weight where flow and colours agree, in [0, 1].
        colour_tolerance: colour difference (mean over RGB, in [0, 1]) where the weight is 0.

    Returns:
        ``[H, W]`` float32 in [0, strength].
    """
    carried = warp(_unit(previous_image), flow.backward)
    difference = np.abs(_unit(image) - carried).mean(axis=2)
    agreement = np.clip(1 - difference / colour_tolerance, 0, 1)
    return (strength * agreement * flow.consistent).astype(np.float32)


def temporal_blend(
    alpha: np.ndarray,
    trimap: np.ndarray,
    previous_alpha: np.ndarray,
    weight: np.ndarray,
    flow: FlowPair,
) -> np.ndarray:
    """Frame t's alpha blended with frame t-1's carried along the flow, in the unknown band.

    Args:
        alpha: ``[H, W]`` float32 alpha of frame t (known regions forced).
        trimap: ``[H, W]`` uint8 trimap of frame t.
        previous_alpha: ``[H, W]`` float32 written alpha of frame t-1, in [0, 1].
        weight: ``[H, W]`` the carried alpha's weight (:func:`temporal_weight`).
        flow: the flow between the frames.

    Returns:
        ``[H, W]`` float32 alpha.
    """
    carried = warp(previous_alpha, flow.backward)
    unknown = trimap == TRIMAP_UNKNOWN
    blended = alpha.copy()
    blended[unknown] += weight[unknown] * (carried[unknown] - alpha[unknown])
    return blended
