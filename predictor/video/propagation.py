"""Guidance for the frames that have none: a keyframe's mask or trimap carried to the following
frames (``--propagate``).

A :class:`Propagator` is anchored at every frame that has its own guidance (the first frame's
``--mask``, or the frames of a sparse ``--mask-dir`` / ``--trimap-dir``) and makes the trimap of
each following frame until the next keyframe. Its state depends only on the frames and the
keyframe, never on the model's output, so a resumed run rebuilds it by replaying the frames
before the first missing one (the pipeline does), and a weak model cannot feed its errors
forward.

:class:`FlowPropagator` (``--propagate flow``, no weights) carries the keyframe by dense optical
flow (:mod:`predictor.video.flow`):

1. the flow of each frame is chained into one map from the frame to the keyframe, so the
   keyframe mask is resampled once per frame, not re-warped from the last warp (a chain of
   warps blurs a hair strand away within a few frames);
2. the trimap is the ``unknown_width`` band around the carried mask (:func:`trimap_from_mask`),
   plus a band around every pixel the resampling left fractional (thin strands and edges the map
   smeared), plus the keyframe trimap's own unknown region, carried;
3. pixels near the band whose flow fails the forward-backward test (occluded, disoccluded,
   mistracked) are unknown too.

It is good for slow, smooth motion of a subject that stays in view; it drifts with fast motion,
motion blur and long gaps between keyframes, and cannot know what an occlusion hid: give more
keyframes there. Prompts on the first frame (``--box`` / ``--point``) become its mask with the
image segmenter (:mod:`predictor.segmenter`) first.

:mod:`predictor.video.sam2_propagation` is the other propagator (SAM 2's video model); the
``--propagate`` choices are in :mod:`predictor.video.propagators`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import cv2
import numpy as np

from data.trimap import TRIMAP_FG, TRIMAP_UNKNOWN, trimap_from_mask, unknown_width_pixels
from predictor.prompts import Prompts
from predictor.video.flow import FlowPair, warp

if TYPE_CHECKING:
    from predictor.segmenter import Segmenter

__all__ = ["FlowPropagator", "Propagator", "mask_from_trimap"]

# Carried mask values strictly between these are "fractional": their neighbourhood is unknown.
FRACTIONAL_LOW, FRACTIONAL_HIGH = 0.02, 0.98
# The carried mask is thresholded at half its range.
MASK_LEVEL = 0.5
# Flow failures this many band widths from the band (or closer) become unknown.
FAILURE_REACH = 2


def mask_from_trimap(trimap: np.ndarray) -> np.ndarray:
    """The mask a trimap stands for: its foreground, and the unknown pixels nearer to the
    foreground than to the background (the middle of the band).

    Args:
        trimap: ``[H, W]`` uint8 {0, 128, 255}.

    Returns:
        ``[H, W]`` bool.
    """
    foreground = trimap == TRIMAP_FG
    unknown = trimap == TRIMAP_UNKNOWN
    if not foreground.any() or not unknown.any():
        return foreground
    background = ~(foreground | unknown)
    if not background.any():
        return foreground | unknown
    to_fg = cv2.distanceTransform(
        (~foreground).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )
    to_bg = cv2.distanceTransform(
        (~background).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )
    return foreground | (unknown & (to_fg <= to_bg))


def _disk(radius: float) -> np.ndarray:
    side = 2 * int(np.ceil(radius)) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))


class Propagator(ABC):
    """Makes the trimaps of the frames between keyframes.

    The pipeline calls :meth:`anchor` (or :meth:`prompt`) at each keyframe and :meth:`propagate`
    at every other frame, in frame order, from the first keyframe on.
    """

    #: Whether :meth:`propagate` needs the :class:`FlowPair` of each frame.
    needs_flow: bool = False

    @abstractmethod
    def anchor(
        self, index: int, image: np.ndarray, trimap: np.ndarray, mask: np.ndarray | None
    ) -> None:
        """Restart from a keyframe.

        Args:
            index: the frame's position in the clip.
            image: ``[H, W, 3]`` RGB levels of the frame.
            trimap: ``[H, W]`` uint8, the keyframe's trimap.
            mask: ``[H, W]`` bool, the keyframe's mask when its guidance is a mask (None for a
                trimap).
        """

    @abstractmethod
    def prompt(self, index: int, image: np.ndarray, prompts: Prompts) -> np.ndarray:
        """Restart from a keyframe given by prompts (a box and/or points) instead of a file.

        Returns:
            ``[H, W]`` uint8 trimap of the frame, made from the mask the prompts give.

        Raises:
            PromptError: prompts outside the frame.
            ValueError: the propagator has no segmenter for prompts.
        """

    @abstractmethod
    def propagate(self, index: int, image: np.ndarray, flow: FlowPair | None) -> np.ndarray:
        """The trimap of the next frame.

        Args:
            index: the frame's position in the clip.
            image: ``[H, W, 3]`` RGB levels of the frame.
            flow: its flow from the previous frame (when :attr:`needs_flow`).

        Returns:
            ``[H, W]`` uint8 trimap {0, 128, 255}.
        """


class FlowPropagator(Propagator):
    """The keyframe carried by optical flow (see the module docstring).

    Args:
        unknown_width: the band on each side of the carried mask's edge, as
            :func:`data.trimap.trimap_from_mask` takes it (px, fraction or ``"auto"``).
        segmenter: the image segmenter that turns prompts into the keyframe's mask (needed only
            for :meth:`prompt`).
    """

    needs_flow = True

    def __init__(self, unknown_width: float | str, segmenter: Segmenter | None = None) -> None:
        self.unknown_width = unknown_width
        self.segmenter = segmenter
        self._mask: np.ndarray | None = None  # [H, W] float32, the keyframe's mask
        self._unknown: np.ndarray | None = None  # [H, W] float32, the keyframe's unknown band
        self._map: np.ndarray | None = None  # [H, W, 2] float32: frame pixel -> keyframe pixel

    def anchor(
        self, index: int, image: np.ndarray, trimap: np.ndarray, mask: np.ndarray | None
    ) -> None:
        keyframe_mask = mask_from_trimap(trimap) if mask is None else mask
        self._mask = keyframe_mask.astype(np.float32)
        unknown = trimap == TRIMAP_UNKNOWN if mask is None else np.zeros(trimap.shape, bool)
        self._unknown = unknown.astype(np.float32)
        height, width = trimap.shape
        grid = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        self._map = np.dstack(grid)

    def prompt(self, index: int, image: np.ndarray, prompts: Prompts) -> np.ndarray:
        if self.segmenter is None:
            raise ValueError("flow propagation from prompts needs an image segmenter")
        guidance = self.segmenter.guidance(image, prompts, self.unknown_width)
        self.anchor(index, image, guidance.trimap, guidance.mask)
        return guidance.trimap

    @staticmethod
    def _sample(keyframe: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        """A keyframe map seen through the frame -> keyframe map (edges replicated)."""
        return cv2.remap(keyframe, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def propagate(self, index: int, image: np.ndarray, flow: FlowPair | None) -> np.ndarray:
        if self._map is None or flow is None:
            raise RuntimeError("FlowPropagator.propagate needs a keyframe and the frame's flow")
        self._map = warp(self._map, flow.backward)
        map_x, map_y = self._map[..., 0], self._map[..., 1]
        carried = self._sample(self._mask, map_x, map_y)
        unknown = self._sample(self._unknown, map_x, map_y)
        mask = carried >= MASK_LEVEL
        trimap = trimap_from_mask(mask, self.unknown_width, source="the carried mask")
        band = trimap == TRIMAP_UNKNOWN
        width = max(unknown_width_pixels(self.unknown_width, mask.shape, mask), 1.0)
        fractional = (carried > FRACTIONAL_LOW) & (carried < FRACTIONAL_HIGH)
        band |= cv2.dilate(fractional.astype(np.uint8), _disk(width)) > 0
        band |= unknown >= MASK_LEVEL
        near = cv2.dilate(band.astype(np.uint8), _disk(FAILURE_REACH * width)) > 0
        band |= near & ~flow.consistent
        trimap[band] = TRIMAP_UNKNOWN
        return trimap
