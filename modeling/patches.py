"""Geometry of the official patch inference, in pure Python: the input padding rule and the
decoder tiles with their context margins. Shared by ``MEMatte.decode_patches``, the lean decoder
and the onnxruntime predictor (which imports it without PyTorch).

References: MEMatte ``inference.py`` (the padding) and its patch inference (the tiles).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

__all__ = [
    "DECODER_OVERLAP",
    "DECODER_PATCH",
    "PatchTile",
    "context_span",
    "padded_size",
    "patch_tiles",
]

# Patch-wise decoding at inference: 512 px patches, each decoded with a 64 px context margin.
DECODER_PATCH = 512
DECODER_OVERLAP = 64

# A half-open pixel span along one axis, and a region (rows, cols).
_Region = tuple[tuple[int, int], tuple[int, int]]


def padded_size(hw: tuple[int, int], step: int) -> tuple[int, int]:
    """Size after the model's input padding (the official rule, quirk included: when either side
    is not a multiple of ``step``, both sides grow to the next multiple strictly above them)."""
    H, W = hw
    if H % step or W % step:
        return H + step - H % step, W + step - W % step
    return H, W


def context_span(start: int, patch: int, size: int) -> tuple[int, int]:
    """Pixel span of a tile with its context margin, as the official patch inference takes it:
    the margin is dropped entirely (not clipped) on a side where it would leave the image."""
    lo = start - DECODER_OVERLAP if start - DECODER_OVERLAP >= 0 else start
    hi = start + patch + DECODER_OVERLAP
    return lo, hi if hi <= size else start + patch


class PatchTile(NamedTuple):
    """One decoder tile.

    Attributes:
        crop: ``(y0, y1, x0, x1)`` of the input the tile decodes (with its context; it may
            reach beyond the input, where the input reads as zeros).
        region: the output pixels it keeps, in the tile's coordinates.
        out: the same pixels ``((top, bottom), (left, right))`` in the output.
    """

    crop: tuple[int, int, int, int]
    region: _Region
    out: _Region


def patch_tiles(
    input_hw: tuple[int, int], out_hw: tuple[int, int], patch: int = DECODER_PATCH
) -> Iterator[PatchTile]:
    """The tiles of the official patch decoder, row by row.

    The input is zero-padded to a multiple of ``patch``; each tile is decoded with up to
    ``DECODER_OVERLAP`` px of context on every side (none on a side where the margin would leave
    the padded input) and only its central ``patch x patch`` (clipped to ``out_hw``) is kept.

    Args:
        input_hw: ``(H, W)`` of the (model-padded) input.
        out_hw: the output size ``(H, W)``, at most ``input_hw``.
        patch: tile side in pixels.
    """
    H, W = input_hw
    out_h, out_w = out_hw
    padded_h, padded_w = H + (-H) % patch, W + (-W) % patch
    for top in range(0, out_h, patch):
        for left in range(0, out_w, patch):
            y0, y1 = context_span(top, patch, padded_h)
            x0, x1 = context_span(left, patch, padded_w)
            bottom, right = min(top + patch, out_h), min(left + patch, out_w)
            region = ((top - y0, bottom - y0), (left - x0, right - x0))
            yield PatchTile((y0, y1, x0, x1), region, ((top, bottom), (left, right)))
