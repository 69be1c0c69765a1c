"""The composition rules of the matting benchmarks built from foregrounds, alpha mattes and
background photos (Composition-1k, the DIM training set, Distinctions-646), one composite at a time.

The rules, as Adobe's ``Composition_code.py`` (shipped with the Deep Image Matting dataset) applies
them:

- backgrounds are taken from the background list in order, ``num_bgs`` per foreground: foreground
  ``i`` of the foreground list gets entries ``i * num_bgs .. (i + 1) * num_bgs - 1``
  (:func:`backgrounds_of`), and composite ``k`` of a foreground is named ``<stem>_<k>.png``;
- a background smaller than the foreground in either side is enlarged by bicubic interpolation to
  ``ceil(side * r)``, ``r`` the larger of the two side ratios (foreground / background, Python
  floats); then the top-left foreground-sized crop is used (:func:`fit_background`). Two bicubic
  filters are in use and give other pixels: OpenCV's ``INTER_CUBIC`` (``"opencv"``: the float32
  Composition-1k script the matting repositories circulate, which reads with ``cv2.imread``;
  the default for Composition-1k and the DIM training set) and PIL's ``BICUBIC`` (``"pil"``: Adobe's
  original PIL script, and Distinctions-646's ``gen_dataset.py``, which converts to PIL for this
  step); :data:`RESIZE_FILTERS`;
- the composite is ``a * fg + (1 - a) * bg`` with ``a = alpha / 255``, computed in float32 and
  truncated to uint8 (:func:`blend`). Adobe's script computes each pixel in Python's float64 and
  the Distinctions-646 script in float64 tensors: on about 0.15 % of the (fractional alpha,
  foreground, background) level combinations the float64 result truncates one level lower or
  higher (``docs/data.md``).

Images are ``[H, W, 3]`` uint8 RGB arrays and alpha mattes ``[H, W]`` uint8 levels.

References: Adobe Deep Image Matting dataset, ``Composition_code.py``; Distinctions-646
(HAttMatting) ``gen_dataset.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from utils.levels import UINT8_MAX

__all__ = [
    "DEFAULT_RESIZE",
    "RESIZE_FILTERS",
    "backgrounds_of",
    "blend",
    "compose",
    "composite_name",
    "enlarged_size",
    "fit_background",
]

# The bicubic filters that enlarge small backgrounds, by name (see the module docstring).
RESIZE_FILTERS = ("opencv", "pil")
DEFAULT_RESIZE = "opencv"


def backgrounds_of(index: int, num_bgs: int, bg_names: list[str]) -> list[str]:
    """The background names of foreground ``index``: the next ``num_bgs`` entries of the list.

    Raises:
        ValueError: the list is too short for this foreground.
    """
    start, stop = index * num_bgs, (index + 1) * num_bgs
    if stop > len(bg_names):
        raise ValueError(
            f"foreground {index} needs backgrounds {start}..{stop - 1} but the list has "
            f"{len(bg_names)}"
        )
    return bg_names[start:stop]


def composite_name(fg_name: str, k: int) -> str:
    """``<foreground stem>_<k>.png``: the file of composite ``k`` of a foreground."""
    return f"{Path(fg_name).stem}_{k}.png"


def enlarged_size(bg_hw: tuple[int, int], fg_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The (height, width) a background is enlarged to, or None when it covers the foreground.

    ``r = max(fg_w / bg_w, fg_h / bg_h)`` in Python floats; for ``r > 1`` each side becomes
    ``ceil(side * r)``, so that the background covers the foreground and keeps its aspect ratio.
    """
    (bh, bw), (h, w) = bg_hw, fg_hw
    ratio = max(w / bw, h / bh)
    if ratio <= 1:
        return None
    return math.ceil(bh * ratio), math.ceil(bw * ratio)


def fit_background(
    background: np.ndarray, fg_hw: tuple[int, int], resize: str = DEFAULT_RESIZE
) -> np.ndarray:
    """The part of a background a composite uses: enlarged by a bicubic filter when it is
    smaller than the foreground (:func:`enlarged_size`), then its top-left ``fg_hw`` crop.

    Args:
        background: ``[h, w, 3]`` uint8 RGB.
        fg_hw: the foreground's (height, width).
        resize: the bicubic filter, ``"opencv"`` (``cv2.INTER_CUBIC``) or ``"pil"``
            (``Image.BICUBIC``).

    Returns:
        ``[H, W, 3]`` uint8 RGB (a copy).

    Raises:
        ValueError: an unknown filter.
    """
    if resize not in RESIZE_FILTERS:
        raise ValueError(f"resize must be one of {RESIZE_FILTERS}, got {resize!r}")
    size = enlarged_size(background.shape[:2], fg_hw)
    if size is not None:
        height, width = size
        if resize == "pil":
            resized = Image.fromarray(background).resize((width, height), Image.Resampling.BICUBIC)
            background = np.asarray(resized)
        else:
            background = cv2.resize(background, (width, height), interpolation=cv2.INTER_CUBIC)
    height, width = fg_hw
    return np.array(background[:height, :width])


def blend(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``a * fg + (1 - a) * bg`` with ``a = alpha / 255``, in float32, truncated to uint8.

    Args:
        foreground: ``[H, W, 3]`` uint8.
        alpha: ``[H, W]`` uint8 levels.
        background: ``[H, W, 3]`` uint8 (already fitted to the foreground).

    Returns:
        ``[H, W, 3]`` uint8.
    """
    a = (alpha.astype(np.float32) / np.float32(UINT8_MAX))[:, :, None]  # [H, W] -> [H, W, 1]
    out = a * foreground.astype(np.float32) + (np.float32(1) - a) * background.astype(np.float32)
    return out.astype(np.uint8)  # truncation: every value is in [0, 255]


def compose(
    foreground: np.ndarray,
    alpha: np.ndarray,
    background: np.ndarray,
    resize: str = DEFAULT_RESIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """One composite of the benchmarks: ``background`` fitted to the foreground, then blended.

    Args:
        foreground: ``[H, W, 3]`` uint8 RGB.
        alpha: ``[H, W]`` uint8 levels.
        background: ``[h, w, 3]`` uint8 RGB, any size.
        resize: the bicubic filter that enlarges a small background (:func:`fit_background`).

    Returns:
        ``(composite, background_crop)``, both ``[H, W, 3]`` uint8 RGB.

    Raises:
        ValueError: the alpha matte's size differs from the foreground's.
    """
    if alpha.shape != foreground.shape[:2]:
        raise ValueError(
            f"alpha {alpha.shape[1]}x{alpha.shape[0]} and foreground "
            f"{foreground.shape[1]}x{foreground.shape[0]} (W x H) differ"
        )
    crop = fit_background(background, foreground.shape[:2], resize)
    return blend(foreground, alpha, crop), crop
