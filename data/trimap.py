"""Trimaps: generated from an alpha matte by erosion (training) or from a mask by a Euclidean
band (your own images), checked, snapped to the levels, and quantized for the network.

An 8-bit trimap (a file, or the training pipeline before ``ToTensor``) holds 0 (background), 128
(unknown) and 255 (foreground); the network takes {0, 0.5, 1}.

A trimap file with other values (a trimap saved as JPEG, resized with interpolation) is refused
by the readers of inference and evaluation, unless ``--snap-trimap`` (``snap_trimap=True``)
asks for :func:`snap_trimap`: each value to the nearest level, a tie (64) to unknown. Not the
training thresholds 85 / 170: JPEG's error is symmetric around the level a pixel had, and the
nearest level gives every level the same margin (63 values each side), where 85 / 170 leave the
unknown level 43 below and 41 above; and a wrong unknown pixel costs less than a wrong definite
one (the model still predicts it, where 0 or 255 force the alpha), so the wider unknown band
(64..191 against 85..169) is the safer side.

The training pipeline keeps :func:`erosion_trimap` (elliptic kernels, as GCA-Matting): the
Euclidean band of :func:`trimap_from_mask` would change its trimaps, so the two share the levels
and nothing else.

References: GCA-Matting / ViTMatte ``GenMask`` (trimap by erosion) and ``ToTensor`` (the 85 / 170
thresholds of training).
"""

import argparse
import logging
import numbers

import cv2
import numpy as np

__all__ = [
    "AUTO_WIDTH",
    "TRIMAP_BG",
    "TRIMAP_FG",
    "TRIMAP_LEVELS",
    "TRIMAP_UNKNOWN",
    "binarize_mask",
    "erosion_trimap",
    "non_trimap_share",
    "parse_unknown_width",
    "quantize_trimap",
    "SNAP_TRIMAP_FLAG",
    "add_snap_trimap_argument",
    "snap_trimap",
    "trimap_from_mask",
    "auto_unknown_width",
    "unknown_width_argument",
    "unknown_width_pixels",
]

logger = logging.getLogger(__name__)

# 8-bit trimap levels.
TRIMAP_BG, TRIMAP_UNKNOWN, TRIMAP_FG = 0, 128, 255
TRIMAP_LEVELS = (TRIMAP_BG, TRIMAP_UNKNOWN, TRIMAP_FG)
# Masks are thresholded at half their range: floats above 0.5, integers above half their maximum.
FLOAT_MASK_THRESHOLD = 0.5
# The boundary of a mask runs half-way between the centres of neighbouring pixels on its two sides.
HALF_PIXEL = 0.5
# Definite foreground: (alpha + DEFINITE_EPS) truncates to 1; definite background:
# (1 - alpha + DEFINITE_EPS) does, computed in alpha's precision (official `GenMask`, 1e-5).
DEFINITE_EPS = 1e-5
# Official quantization of 8-bit trimaps for training: below 85 background, from 170 foreground,
# unknown in between.
TRIMAP_BG_BELOW = 85
TRIMAP_FG_FROM = 170
# The command-line option that snaps a trimap's other values to the levels (snap_trimap).
SNAP_TRIMAP_FLAG = "--snap-trimap"
# Trimap values the network takes.
BACKGROUND, UNKNOWN, FOREGROUND = 0.0, 0.5, 1.0
# unknown_width "auto": a fraction of the diagonal of the mask's bounding box, clamped to a pixel
# range (a 1000 px subject gets 20 px on each side of its edge; small subjects keep a band of a
# few pixels, 6K subjects stop at AUTO_WIDTH_MAX_PX).
AUTO_WIDTH = "auto"
AUTO_WIDTH_FRACTION = 0.02
AUTO_WIDTH_MIN_PX = 4.0
AUTO_WIDTH_MAX_PX = 160.0


def _eroded_definite(values: np.ndarray, kernel_size: int) -> np.ndarray:
    """Where ``(values + DEFINITE_EPS)`` truncates to 1 (the official
    ``.astype(int).astype(np.uint8)`` mask, in ``values``' precision), eroded by an elliptic
    ``kernel_size x kernel_size`` kernel (1: unchanged)."""
    mask = (values + DEFINITE_EPS).astype(int).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    return cv2.erode(mask, kernel) == 1


def erosion_trimap(alpha: np.ndarray, fg_kernel: int, bg_kernel: int) -> np.ndarray:
    """Trimap of an alpha matte: its definite foreground and background, each eroded by an
    elliptic kernel, are 255 and 0; the rest (the band around every fractional alpha) is 128.

    Definite foreground is where ``alpha + 1e-5`` truncates to 1, definite background where
    ``1 - alpha + 1e-5`` does: the official expressions, evaluated in ``alpha``'s precision
    (float32 in training, where they differ from ``alpha <= 1e-5`` just above 1e-5).

    Args:
        alpha: ``[H, W]`` float alpha in [0, 1] (slight overshoot from resampling allowed).
        fg_kernel: side in px of the kernel that erodes the definite foreground.
        bg_kernel: side in px of the kernel that erodes the definite background.

    Returns:
        ``[H, W]`` uint8 trimap in {0, 128, 255}.
    """
    trimap = np.full(alpha.shape, TRIMAP_UNKNOWN, np.uint8)
    trimap[_eroded_definite(alpha, fg_kernel)] = TRIMAP_FG
    trimap[_eroded_definite(1 - alpha, bg_kernel)] = TRIMAP_BG
    return trimap


def quantize_trimap(trimap: np.ndarray) -> np.ndarray:
    """8-bit trimap levels -> the network's {0, 0.5, 1} with the official training thresholds.

    Args:
        trimap: ``[H, W]`` array on the 0..255 scale.

    Returns:
        ``[H, W]`` float32: 0 below ``TRIMAP_BG_BELOW``, 1 from ``TRIMAP_FG_FROM``, else 0.5.
    """
    out = np.full(trimap.shape, UNKNOWN, np.float32)
    out[trimap < TRIMAP_BG_BELOW] = BACKGROUND
    out[trimap >= TRIMAP_FG_FROM] = FOREGROUND
    return out


def _nearest_level(value: int) -> int:
    """The trimap level nearest to an 8-bit ``value``; unknown on a tie (64 is 64 from 0 and
    from 128)."""
    by_preference = (TRIMAP_UNKNOWN, TRIMAP_BG, TRIMAP_FG)
    return min(by_preference, key=lambda level: abs(value - level))


# Every 8-bit value -> its nearest trimap level.
_SNAP_TABLE = np.array([_nearest_level(value) for value in range(256)], np.uint8)


def snap_trimap(levels: np.ndarray) -> np.ndarray:
    """An 8-bit trimap with each value moved to the nearest of 0, 128 and 255 (a tie to 128):
    0..63 -> 0, 64..191 -> 128, 192..255 -> 255. See the module docstring for why this rule.

    Args:
        levels: ``[H, W]`` uint8 map.

    Returns:
        ``[H, W]`` uint8 trimap in {0, 128, 255}.
    """
    return _SNAP_TABLE[levels]


def add_snap_trimap_argument(parser: argparse.ArgumentParser) -> None:
    """``--snap-trimap``: accept trimaps with values other than 0, 128 and 255 (a trimap saved
    as JPEG), each value snapped to the nearest level (:func:`snap_trimap`)."""
    parser.add_argument(
        SNAP_TRIMAP_FLAG,
        action="store_true",
        help="accept trimaps with values other than 0/128/255 (e.g. saved as JPEG): each value "
        "goes to the nearest level (0..63 background, 64..191 unknown, 192..255 foreground); "
        "without it such a trimap is refused",
    )


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """A mask thresholded at half its range: bool as is, uint8 ``> 127``, uint16 ``> 32767``,
    float ``> 0.5`` (soft masks welcome).

    Args:
        mask: ``[H, W]`` (or ``[H, W, 1]``) bool, uint8, uint16 or float array.

    Returns:
        ``[H, W]`` bool, True in the foreground.

    Raises:
        ValueError: another shape or dtype (e.g. an int64 label map: convert it first).
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise ValueError(f"a mask must be [H, W], got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    if mask.dtype in (np.uint8, np.uint16):
        return mask > np.iinfo(mask.dtype).max // 2
    if np.issubdtype(mask.dtype, np.floating):
        return mask > FLOAT_MASK_THRESHOLD
    raise ValueError(
        f"a mask must be bool, uint8 (0..255), uint16 or float (0..1), got {mask.dtype}"
    )


def auto_unknown_width(foreground: np.ndarray) -> float:
    """The ``"auto"`` unknown width of a mask, in px: ``AUTO_WIDTH_FRACTION`` of the diagonal of
    its foreground's bounding box, clamped to ``[AUTO_WIDTH_MIN_PX, AUTO_WIDTH_MAX_PX]``.

    Args:
        foreground: ``[H, W]`` bool (:func:`binarize_mask`); an empty mask gets the minimum.
    """
    rows, cols = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    if not rows.size:
        return AUTO_WIDTH_MIN_PX
    diagonal = float(np.hypot(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    return float(np.clip(AUTO_WIDTH_FRACTION * diagonal, AUTO_WIDTH_MIN_PX, AUTO_WIDTH_MAX_PX))


def unknown_width_pixels(
    unknown_width: float | str, shape: tuple[int, ...], foreground: np.ndarray | None = None
) -> float:
    """An unknown-band width in pixels: an int (or a float of at least 1) is pixels, a float
    below 1 a fraction of the image's shorter side, ``"auto"`` :func:`auto_unknown_width` of
    ``foreground``.

    Raises:
        ValueError: a negative width, not a number, or ``"auto"`` without a mask.
    """
    if unknown_width == AUTO_WIDTH:
        if foreground is None:
            raise ValueError("unknown_width 'auto' is relative to a mask: give the mask")
        return auto_unknown_width(foreground)
    if isinstance(unknown_width, bool) or not isinstance(unknown_width, numbers.Real):
        raise ValueError(f"unknown_width must be a number, got {unknown_width!r}")
    if unknown_width < 0:
        raise ValueError(f"unknown_width must be >= 0, got {unknown_width}")
    if isinstance(unknown_width, numbers.Integral) or unknown_width >= 1:
        return float(unknown_width)
    return float(unknown_width) * min(shape[:2])


def parse_unknown_width(text: str) -> float | str:
    """A command-line width: ``"20"`` -> 20 px (int), ``"0.02"`` -> a fraction (float),
    ``"auto"`` -> relative to each mask (:func:`auto_unknown_width`).

    Raises:
        ValueError: not a number or ``auto``, or negative.
    """
    if text == AUTO_WIDTH:
        return AUTO_WIDTH
    value = float(text) if any(c in text for c in ".eE") else int(text)
    unknown_width_pixels(value, (1, 1))  # validates
    return value


def unknown_width_argument(text: str) -> float | str:
    """:func:`parse_unknown_width` as an argparse ``type``: errors are usage errors that say why."""
    try:
        return parse_unknown_width(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def trimap_from_mask(
    mask: np.ndarray, unknown_width: float | str, *, source: str = "the mask"
) -> np.ndarray:
    """Trimap of a (rough) mask: unknown within ``unknown_width`` px of its boundary.

    The mask is thresholded at half its range (:func:`binarize_mask`). A pixel is unknown (128)
    when the Euclidean distance from its centre to the mask boundary, which runs half-way between
    the centres of neighbouring foreground and background pixels, is at most ``unknown_width``,
    on either side; the rest is foreground (255) or background (0).

    Args:
        mask: ``[H, W]`` mask (bool, uint8, uint16 or float).
        unknown_width: pixels (int, or float >= 1), a fraction of the image's shorter side
            (float < 1) or ``"auto"`` (:func:`auto_unknown_width` of the mask) on each side of
            the boundary; 0 gives no unknown band.
        source: what the mask is (a file name) for the warning.

    Returns:
        ``[H, W]`` uint8 trimap in {0, 128, 255}. An empty or full mask gives all 0 or all 255
        with a warning.

    Raises:
        ValueError: bad mask shape or dtype, or a negative width.
    """
    raw = np.asarray(mask)
    foreground = binarize_mask(raw)
    width = unknown_width_pixels(unknown_width, foreground.shape, foreground)
    if not foreground.any() or foreground.all():
        hint = ""
        if raw.dtype == np.uint8 and 0 < raw.max() <= 1:
            hint = " (values 0 and 1 in an 8-bit mask: scale it to 0/255)"
        logger.warning(
            "%s is %s%s: the trimap is all %s",
            source,
            "empty" if not foreground.any() else "full",
            hint,
            "background" if not foreground.any() else "foreground",
        )
        return np.full(foreground.shape, TRIMAP_FG if foreground.any() else TRIMAP_BG, np.uint8)
    trimap = np.where(foreground, TRIMAP_FG, TRIMAP_BG).astype(np.uint8)
    # Pixel-centre distance to the nearest pixel on the other side (exact Euclidean).
    for side in (foreground, ~foreground):
        distance = cv2.distanceTransform(side.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        trimap[side & (distance <= width + HALF_PIXEL)] = TRIMAP_UNKNOWN
    return trimap


def non_trimap_share(levels: np.ndarray) -> float:
    """Share of the pixels of an 8-bit map whose value is not 0, 128 or 255."""
    return float(1 - np.isin(levels, TRIMAP_LEVELS).mean()) if levels.size else 0.0
