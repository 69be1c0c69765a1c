"""Dense optical flow between consecutive frames (OpenCV's DIS flow), its forward-backward
consistency, and warping by it.

Flows are ``[H, W, 2]`` float32 (x, y) displacements in pixels. For consecutive frames t-1 and t,
the *backward* flow ``b`` maps each pixel ``x`` of frame t to where it was in frame t-1
(``x + b(x)``), so ``warp(previous, b)`` brings anything of frame t-1 into frame t; the *forward*
flow ``f`` maps frame t-1 to frame t. A pixel's flow is trusted where the two agree: ``b(x) +
f(x + b(x))`` is small (Sundaram et al. 2010): occluded, disoccluded and badly tracked pixels
fail the test.

Large frames are measured at a reduced size (``max_side``) and the flow scaled back up: DIS cost
grows with the pixels and the flow of a matte's neighbourhood needs no 4K detail.

References: Kroeger et al., "Fast Optical Flow using Dense Inverse Search" (ECCV 2016, OpenCV's
``DISOpticalFlow``); Sundaram, Brox and Keutzer, "Dense Point Trajectories by GPU-Accelerated
Large Displacement Optical Flow" (ECCV 2010, the consistency test).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from utils.levels import UINT8_MAX

__all__ = ["FLOW_MAX_SIDE", "FlowEstimator", "FlowPair", "to_gray", "warp"]

# Frames are measured with their longer side at most this many pixels.
FLOW_MAX_SIDE = 1280
# Forward-backward test: |b + f_warped|^2 < RELATIVE * (|b|^2 + |f_warped|^2) + ABSOLUTE (px^2).
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_ABSOLUTE = 0.5


@dataclass(frozen=True)
class FlowPair:
    """The flow between frames t-1 and t.

    Attributes:
        backward: ``[H, W, 2]`` float32, frame t -> frame t-1.
        forward: ``[H, W, 2]`` float32, frame t-1 -> frame t.
        consistent: ``[H, W]`` bool, where the two agree (pixels of frame t).
    """

    backward: np.ndarray
    forward: np.ndarray
    consistent: np.ndarray


def to_gray(image: np.ndarray) -> np.ndarray:
    """An RGB frame (``[H, W, 3]`` uint8 or uint16 levels) as the 8-bit gray DIS measures."""
    if image.dtype != np.uint8:
        scale = UINT8_MAX / np.iinfo(image.dtype).max
        image = np.round(image.astype(np.float32) * scale).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def warp(image: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """``image`` sampled at ``x + flow(x)`` (edges replicated).

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` array (float32 or uint8).
        flow: ``[H, W, 2]`` float32 displacements into ``image``.
        interpolation: an OpenCV interpolation flag.
    """
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(
        np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    )
    return cv2.remap(
        image,
        grid_x + flow[..., 0],
        grid_y + flow[..., 1],
        interpolation,
        borderMode=cv2.BORDER_REPLICATE,
    )


class FlowEstimator:
    """DIS optical flow between consecutive frames, with the forward-backward test.

    Not thread-safe: one estimator per thread.

    Args:
        preset: an OpenCV DIS preset (``cv2.DISOPTICAL_FLOW_PRESET_*``).
        max_side: frames whose longer side is larger are measured at this size.
    """

    def __init__(
        self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, max_side: int = FLOW_MAX_SIDE
    ) -> None:
        self.dis = cv2.DISOpticalFlow_create(preset)
        self.max_side = max_side

    def _flow(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """DIS flow ``[h, w, 2]`` from gray ``source`` to gray ``target``."""
        return self.dis.calc(source, target, None)

    def pair(self, previous_gray: np.ndarray, current_gray: np.ndarray) -> FlowPair:
        """The :class:`FlowPair` of two consecutive gray frames (:func:`to_gray`)."""
        height, width = current_gray.shape
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            small = (max(1, round(width * scale)), max(1, round(height * scale)))
            previous_gray = cv2.resize(previous_gray, small, interpolation=cv2.INTER_AREA)
            current_gray = cv2.resize(current_gray, small, interpolation=cv2.INTER_AREA)
        backward = self._flow(current_gray, previous_gray)
        forward = self._flow(previous_gray, current_gray)
        if scale < 1.0:
            # Back to full size: resample the field, and scale the displacements with it.
            backward = cv2.resize(backward, (width, height), interpolation=cv2.INTER_LINEAR)
            forward = cv2.resize(forward, (width, height), interpolation=cv2.INTER_LINEAR)
            backward /= scale
            forward /= scale
        forward_there = warp(forward, backward)
        error = np.square(backward + forward_there).sum(axis=2)
        bound = CONSISTENCY_RELATIVE * (
            np.square(backward).sum(axis=2) + np.square(forward_there).sum(axis=2)
        )
        return FlowPair(backward, forward, error < bound + CONSISTENCY_ABSOLUTE)
