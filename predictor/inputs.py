"""What the predictors accept as an image, a trimap or a mask, read and checked once.

Inputs are read as the official ``inference.py`` reads them: RGB / 255 (16-bit images / 65535;
gray replicated, an alpha channel dropped, EXIF orientation ignored, as PIL's
``convert("RGB")``), trimap = 8-bit value / 255 (unknown = 128 / 255; a trimap with other
values is refused unless it is to be snapped to the levels). Paths go through the readers of
:mod:`data.image_io`; PIL images, numpy arrays and PyTorch tensors are converted with the same
rules. The result is numpy arrays: this module does not import PyTorch (a tensor can only be given
where PyTorch is imported already), so the onnxruntime predictor runs without it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

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

ImageInput = Union[str, Path, Image.Image, np.ndarray, "torch.Tensor"]  # noqa: UP007, F821
MapInput = Union[str, Path, Image.Image, np.ndarray, "torch.Tensor"]  # noqa: UP007, F821


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


def _tensor_array(value: Any) -> np.ndarray | None:
    """A PyTorch tensor as a numpy array (sharing its memory on the CPU); None for anything
    else. PyTorch is not imported here: where it is not loaded, nothing is a tensor."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(value, torch.Tensor):
        return None
    return value.detach().cpu().numpy()


def image_levels(image: ImageInput) -> np.ndarray:
    """An image input as ``[H, W, 3]`` RGB: uint8 or uint16 levels, or float32 in [0, 1].

    Args:
        image: a file path, a PIL image, an ``[H, W, 3]`` (or ``[H, W]`` gray, ``[H, W, 4]``
            RGBA) uint8/uint16 RGB array, an ``[H, W, 3]`` float array in [0, 1], or a
            ``[3, H, W]`` tensor (uint8 levels or float in [0, 1]).

    Raises:
        BadSampleError: an unreadable file, or a shape or pixel type that is none of these.
        ValueError: float values outside [0, 1].
    """
    if isinstance(image, str | Path):
        return read_rgb_levels(image)
    if isinstance(image, Image.Image):
        return to_rgb_levels(_pil_levels(image), "PIL image")
    tensor = _tensor_array(image)
    if tensor is not None:
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise BadSampleError("image tensor", f"expected [3, H, W], got {tensor.shape}")
        levels = tensor.transpose(1, 2, 0)  # [3, H, W] -> [H, W, 3], a view
        return _checked_unit_range(levels) if levels.dtype.kind == "f" else levels
    array = np.asarray(image)
    if np.issubdtype(array.dtype, np.floating):
        if array.ndim != 3 or array.shape[2] != 3:
            raise BadSampleError("image array", f"expected [H, W, 3], got {array.shape}")
        return _checked_unit_range(array)
    return to_rgb_levels(array, "image array")


def _checked_unit_range(image: np.ndarray) -> np.ndarray:
    """A float image as float32, checked to hold values in [0, 1]."""
    image = image.astype(np.float32, copy=False)
    if image.size and (image.min() < 0 or image.max() > 1):
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
    tensor = _tensor_array(trimap)
    array = np.asarray(trimap if tensor is None else tensor)
    return trimap_levels(array, "trimap array", snap=snap)


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
    tensor = _tensor_array(mask)
    return np.asarray(mask) if tensor is None else tensor


def prepare_inputs(
    image: ImageInput,
    trimap: MapInput | None = None,
    *,
    mask: MapInput | None = None,
    unknown_width: float | None = None,
    snap_trimap: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One image's predictor inputs: ``[H, W, 3]`` RGB (:func:`image_levels`) and its ``[H, W]``
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
    if trimap_map.shape != levels.shape[:2]:
        raise ValueError(
            f"the {'mask' if mask is not None else 'trimap'} is {trimap_map.shape[1]}x"
            f"{trimap_map.shape[0]} but the image is {levels.shape[1]}x{levels.shape[0]} "
            "(W x H)"
        )
    return levels, trimap_map
