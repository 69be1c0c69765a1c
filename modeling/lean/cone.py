"""Region algebra of the lean decoder: which part of every decoder map an output region needs.

A decoder tile only keeps its central ``patch x patch`` pixels, and a row strip only its rows: the
lean decoder evaluates every stage on the part of its map that the wanted region depends on (its
dependency cone, clipped to the map), which gives exactly the whole-map values there.

Coordinates are half-open pixel spans ``(lo, hi)`` per axis of the map they refer to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

from torch import Tensor

from modeling.decoder.detail_capture import Region

__all__ = ["Cone", "Region", "Span", "crop", "down_need", "origin", "shift", "spans"]

# A half-open pixel span ``(lo, hi)`` along one axis; a ``Region`` is ``(rows, cols)`` spans.
Span = tuple[int, int]


def conv_need(span: Span, size: int) -> Span:
    """Input span that a 3x3, stride-1, padding-1 conv needs for the output ``span``."""
    return max(span[0] - 1, 0), min(span[1] + 1, size)


def down_need(span: Span, size: int) -> Span:
    """Input span that a 3x3, stride-2, padding-1 conv needs for the output ``span``.

    The span starts on an even pixel so that the conv's stride grid stays aligned; output pixel
    ``j`` reads input pixels ``2j - 1 .. 2j + 1``.
    """
    return max(2 * span[0] - 2, 0), min(2 * span[1], size)


def up_need(span: Span, size: int) -> Span:
    """Input span that a x2 bilinear upsampling (``align_corners=False``) needs for ``span``.

    Output pixel ``x`` samples the input at ``max((x + 0.5) / 2 - 0.5, 0)``, i.e. pixels
    ``floor`` and ``floor + 1`` (clamped to the map) of that coordinate.
    """
    lo = max(math.floor((span[0] + 0.5) / 2 - 0.5), 0)
    hi = min(math.floor((span[1] - 1 + 0.5) / 2 - 0.5) + 2, size)
    return lo, hi


def spans(region: Region, rule: Callable[[Span, int], Span], size: tuple[int, int]) -> Region:
    """Apply a per-axis span rule to both axes of a region of a map of ``size``."""
    return rule(region[0], size[0]), rule(region[1], size[1])


def hull(*regions: Region) -> Region:
    """Smallest region holding all of them."""
    return tuple((min(s[0] for s in axis), max(s[1] for s in axis)) for axis in zip(*regions))


def origin(region: Region) -> tuple[int, int]:
    """Top-left corner ``(row, col)`` of a region."""
    return region[0][0], region[1][0]


def shift(region: Region, new_origin: tuple[int, int]) -> Region:
    """``region`` in coordinates where ``new_origin`` is (0, 0)."""
    (y0, y1), (x0, x1) = region
    return (y0 - new_origin[0], y1 - new_origin[0]), (x0 - new_origin[1], x1 - new_origin[1])


def crop(x: Tensor, region: Region, at: tuple[int, int] = (0, 0)) -> Tensor:
    """``x[..., rows, cols]`` for a region given in coordinates where ``x`` starts at ``at``."""
    (y0, y1), (x0, x1) = shift(region, at)
    return x[..., y0:y1, x0:x1]


class Cone(NamedTuple):
    """Regions of every decoder map that one output region depends on.

    Attributes:
        fusion_in: per fusion stage, the region of its (detail, upsampled) conv input.
        inputs: per fusion stage, the region of its coarse input (``inputs[0]``: the ViT
            features); ``inputs[num_fusions]`` is the last stage's output region, the input of
            the matting head.
        detail: per scale k, the region of the detail map Dk (D0 = the input image) that its
            fusion stage and the next (stride-2) conv-stream stage need.
    """

    fusion_in: list[Region]
    inputs: list[Region]
    detail: list[Region]

    @classmethod
    def of(cls, region: Region, sizes: Sequence[tuple[int, int]], num_fusions: int) -> Cone:
        """Walk the decoder backwards from ``region``; ``sizes[k]`` is the map size at scale k
        (1 / 2**k of the input; ``sizes[num_fusions]`` is the feature map)."""
        fusion_in: list[Region] = [None] * num_fusions
        inputs: list[Region] = [None] * num_fusions + [spans(region, conv_need, sizes[0])]
        detail: list[Region] = [None] * num_fusions
        for i in reversed(range(num_fusions)):
            scale = num_fusions - 1 - i
            fusion_in[i] = spans(inputs[i + 1], conv_need, sizes[scale])
            detail[scale] = fusion_in[i]
            inputs[i] = spans(fusion_in[i], up_need, sizes[scale + 1])
        for k in reversed(range(1, num_fusions)):
            detail[k - 1] = hull(detail[k - 1], spans(detail[k], down_need, sizes[k - 1]))
        return cls(fusion_in, inputs, detail)
