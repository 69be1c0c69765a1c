"""What the predictors accept as an image, a trimap or a mask, read and checked once.

Inputs are read as the official ``inference.py`` reads them: RGB / 255 (16-bit images / 65535;
gray replicated, an alpha channel dropped, EXIF orientation ignored, as PIL's
``convert("RGB")``), trimap = 8-bit value / 255 (unknown = 128 / 255; a trimap with other
values is refused unless it is to be snapped to the levels). Paths go through the
readers of :mod:`data.image_io`; PIL images, numpy arrays and tensors are converted with the same
rules.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from data.image_io import (
    BadSampleError,
    read_map_levels,
    read_rgb_levels,
    read_trimap_levels,
    to_map_levels,
    to_rgb_levels,
    trimap_levels,
)
from data.pixel_limits import DEFAULT_MAX_PIXELS
from data.trimap import trimap_from_mask
from utils.levels import UINT16_MAX

__all__ = [
    "ImageInput",
    "MapInput",
    "image_levels",
    "mask_levels",
    "prepare_inputs",
    "trimap_input_levels",
]

# PIL modes of 16-bit (or 32-bit integer) gray images, read at their bit depth.
_PIL_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I")

ImageInput = str | Path | Image.Image | np.ndarray | Tensor
MapInput = str | Path | Image.Image | np.ndarray | Tensor


def _pil_levels(image: Image.Image) -> np.ndarray:
    """A PIL image as an array at its bit depth: 16-bit gray as uint16, else ``convert("RGB")``
    (or "L" for single-band images)."""
    if image.mode in _PIL_DEEP_MODES:
        levels = np.array(image)
        if levels.dtype != np.uint16:
            if levels.min() < 0 or levels.max() > UINT16_MAX:
                raise BadSampleError("PIL image", f"{image.mode} values outside 0..65535")
            levels = levels.astype(np.uint16)
        return levels
    return np.array(image.convert("L" if len(image.getbands()) == 1 else "RGB"))


def image_levels(image: ImageInput) -> Tensor:
    """An image input as ``[3, H, W]`` RGB: uint8 or uint16 levels, or float in [0, 1].

    Args:
        image: a file path, a PIL image, an ``[H, W, 3]`` (or ``[H, W]`` gray, ``[H, W, 4]``
            RGBA) uint8/uint16 RGB array, an ``[H, W, 3]`` float array in [0, 1], or a
            ``[3, H, W]`` tensor (uint8 levels or float in [0, 1]).

    Raises:
        BadSampleError: an unreadable file, or a shape or pixel type that is none of these.
        ValueError: float values outside [0, 1].
    """
    if isinstance(image, str | Path):
        levels = read_rgb_levels(image)
    elif isinstance(image, Image.Image):
        levels = to_rgb_levels(_pil_levels(image), "PIL image")
    elif isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise BadSampleError("image tensor", f"expected [3, H, W], got {tuple(image.shape)}")
        return _checked_unit_range(image) if image.is_floating_point() else image
    else:
        array = np.asarray(image)
        if np.issubdtype(array.dtype, np.floating):
            if array.ndim != 3 or array.shape[2] != 3:
                raise BadSampleError("image array", f"expected [H, W, 3], got {array.shape}")
            return _checked_unit_range(torch.from_numpy(array).permute(2, 0, 1).float())
        levels = to_rgb_levels(array, "image array")
    return _read_only_view(levels).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]


def _read_only_view(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory, also when the array is read-only (as arrays of PIL
    images are): the predictor never writes to its inputs, so a copy (72 MiB for a 6K photo)
    is not needed and torch's warning about non-writable arrays does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _checked_unit_range(image: Tensor) -> Tensor:
    if image.numel() and (image.min() < 0 or image.max() > 1):
        raise ValueError("a float image must hold values in [0, 1] (RGB / 255)")
    return image


def trimap_input_levels(trimap: MapInput, *, snap: bool = False) -> np.ndarray:
    """A trimap input as ``[H, W]`` uint8 levels 0, 128, 255 (:func:`data.image_io.trimap_levels`).

    Args:
        trimap: a file path, a PIL image, or an ``[H, W]`` uint8 array or tensor.
        snap: move values other than the levels to the nearest one instead of refusing them.

    Raises:
        BadSampleError: an unreadable file, a colour or non-8-bit trimap, or (without ``snap``)
            values other than 0, 128 and 255.
    """
    if isinstance(trimap, str | Path):
        return read_trimap_levels(trimap, snap=snap)
    if isinstance(trimap, Image.Image):
        return trimap_levels(_pil_levels(trimap), "trimap (PIL image)", snap=snap)
    return trimap_levels(np.asarray(trimap), "trimap array", snap=snap)


def mask_levels(mask: MapInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask input as an ``[H, W]`` array for :func:`data.trimap.trimap_from_mask`.

    Args:
        mask: a file path (8- or 16-bit gray), a PIL image, or an ``[H, W]`` bool, uint8, uint16
            or float array or tensor.
        max_pixels: the largest mask file read (refused before decoding above it).

    Raises:
        BadSampleError: an unreadable file, one above ``max_pixels`` or a colour image.
    """
    if isinstance(mask, str | Path):
        return read_map_levels(mask, max_pixels=max_pixels)
    if isinstance(mask, Image.Image):
        return to_map_levels(_pil_levels(mask), "mask (PIL image)")
    return np.asarray(mask)


def prepare_inputs(
    image: ImageInput,
    trimap: MapInput | None = None,
    *,
    mask: MapInput | None = None,
    unknown_width: float | None = None,
    snap_trimap: bool = False,
) -> tuple[Tensor, np.ndarray]:
    """One image's predictor inputs: ``[3, H, W]`` RGB (:func:`image_levels`) and its ``[H, W]``
    uint8 trimap, given (values other than 0, 128 and 255 refused, or snapped with
    ``snap_trimap``: :func:`trimap_input_levels`) or made from a mask by
    :func:`data.trimap.trimap_from_mask`.

    Raises:
        BadSampleError: an unreadable input file, an input of an unsupported form, or a trimap
            with other values (without ``snap_trimap``).
        ValueError: neither or both of ``trimap`` and ``mask``, no ``unknown_width`` with a
            mask, or sizes that differ.
    """
    if (trimap is None) == (mask is None):
        raise ValueError("give either a trimap or a mask (with unknown_width)")
    levels = image_levels(image)
    if mask is not None:
        if unknown_width is None:
            raise ValueError(
                "a mask needs unknown_width: px (e.g. 20) or a fraction of the shorter side "
                "(e.g. 0.02)"
            )
        source = str(mask) if isinstance(mask, str | Path) else "the mask"
        trimap_map = trimap_from_mask(mask_levels(mask), unknown_width, source=source)
    else:
        trimap_map = trimap_input_levels(trimap, snap=snap_trimap)
    if trimap_map.shape != tuple(levels.shape[-2:]):
        raise ValueError(
            f"the {'mask' if mask is not None else 'trimap'} is {trimap_map.shape[1]}x"
            f"{trimap_map.shape[0]} but the image is {levels.shape[-1]}x{levels.shape[-2]} "
            "(W x H)"
        )
    return levels, trimap_map
