"""Region algebra of the lean decoder: which part of every decoder map an output region needs.

A decoder tile keeps only its central ``patch x patch`` pixels, and of those only the ones the
known-region clamp does not overwrite: the lean decoder evaluates every stage on the part of its
map that the wanted pixels depend on (their dependency cone, clipped to the map), which gives
exactly the whole-map values there.

Coordinates are half-open pixel spans ``(lo, hi)`` per axis of the map they refer to; a
``Region`` is ``(rows, cols)``. Spans that leave the map ``[0, size)`` stand for a conv's zero
padding there (:func:`margins`). Pure Python: the onnxruntime predictor uses it without PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConvGeometry",
    "Region",
    "Span",
    "area",
    "clip",
    "crop",
    "hull",
    "margins",
    "origin",
    "shift",
    "up_need",
]

# A half-open pixel span ``(lo, hi)`` along one axis, and a region ``(rows, cols)`` of a map.
Span = tuple[int, int]
Region = tuple[Span, Span]


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride and padding of a 2-d conv (per axis) and its multiply-adds per output
    pixel (all output channels)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    macs: int

    @classmethod
    def of(cls, conv: Any) -> ConvGeometry:
        """The geometry of an ``nn.Conv2d`` (read from its attributes)."""
        return cls(
            tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), conv.weight.numel()
        )

    def reads(self, region: Region) -> Region:
        """Input region this conv reads for the output ``region``, unclipped: output pixel ``j``
        reads inputs ``stride * j - padding`` to ``stride * j - padding + kernel - 1``, so a
        zero-padded crop of it, convolved without padding, gives exactly ``region``."""
        return tuple(
            (stride * lo - pad, stride * (hi - 1) - pad + kernel)
            for (lo, hi), kernel, stride, pad in zip(
                region, self.kernel, self.stride, self.padding, strict=True
            )
        )


def up_need(span: Span, size: int) -> Span:
    """Input span that a x2 bilinear upsampling (``align_corners=False``) needs for ``span``.

    Output pixel ``x`` samples the input at ``max((x + 0.5) / 2 - 0.5, 0)``, i.e. pixels
    ``floor`` and ``floor + 1`` (clamped to the map) of that coordinate.
    """
    lo = max(math.floor((span[0] + 0.5) / 2 - 0.5), 0)
    hi = min(math.floor((span[1] - 1 + 0.5) / 2 - 0.5) + 2, size)
    return lo, hi


def clip(region: Region, size: tuple[int, int]) -> Region:
    """``region`` clipped to a map of ``size``."""
    return tuple((max(lo, 0), min(hi, n)) for (lo, hi), n in zip(region, size, strict=True))


def margins(region: Region, inside: Region) -> tuple[int, int, int, int]:
    """How far ``region`` reaches beyond ``inside`` (a part of it): ``(left, right, top,
    bottom)``, the order of ``F.pad`` and ``numpy.pad``'s last two axes."""
    (y0, y1), (x0, x1) = region
    (i0, i1), (j0, j1) = inside
    return j0 - x0, x1 - j1, i0 - y0, y1 - i1


def hull(*regions: Region) -> Region:
    """Smallest region holding all of them."""
    return tuple((min(s[0] for s in axis), max(s[1] for s in axis)) for axis in zip(*regions))


def area(region: Region) -> int:
    """Pixels of a region."""
    (y0, y1), (x0, x1) = region
    return max(y1 - y0, 0) * max(x1 - x0, 0)


def origin(region: Region) -> tuple[int, int]:
    """Top-left corner ``(row, col)`` of a region."""
    return region[0][0], region[1][0]


def shift(region: Region, new_origin: tuple[int, int]) -> Region:
    """``region`` in coordinates where ``new_origin`` is (0, 0)."""
    (y0, y1), (x0, x1) = region
    return (y0 - new_origin[0], y1 - new_origin[0]), (x0 - new_origin[1], x1 - new_origin[1])


def crop(x: Any, region: Region, at: tuple[int, int] = (0, 0)) -> Any:
    """``x[..., rows, cols]`` (a tensor or an array) for a region given in coordinates where
    ``x`` starts at ``at``."""
    (y0, y1), (x0, x1) = shift(region, at)
    return x[..., y0:y1, x0:x1]
