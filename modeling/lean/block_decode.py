"""Running a block-sparse decoder plan, box by box, on any array backend.

:func:`decode_plan` walks a :class:`~modeling.lean.blocks.DecoderPlan` stage by stage: every map
is held for the hull of its boxes, each box is computed from crops of the maps below by the
backend's per-box computations (:class:`DecoderStages`), and the head yields alpha per output
box. The backend is PyTorch (:class:`~modeling.lean.decoder.LeanDetailCapture`) or onnxruntime
(``predictor.onnx_predictor``, one graph per stage); crops are plain slicing, so the walk is the
same for tensors and numpy arrays. Pure Python: no PyTorch import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from .blocks import DecoderPlan, DecoderSpec
from .cone import Region, clip, crop, hull, margins, origin, up_need

__all__ = ["DecoderStages", "decode_plan"]

# (left, right, top, bottom) zeros around a crop: the conv padding where a region leaves its map.
Pads = tuple[int, int, int, int]


class DecoderStages(Protocol):
    """The per-box computations of a decoder backend. Inputs are ``[B, C, h, w]`` crops; a
    stage zero-pads its conv input by ``pads`` and convolves it without padding."""

    def stride_down(self, k: int, x: Any, pads: Pads) -> Any:
        """Conv stream stage ``k`` (D{k-1} -> D{k}) with its BatchNorm and ReLU."""

    def fuse(self, i: int, detail: Any, coarse: Any, offset: tuple[int, int], pads: Pads) -> Any:
        """Fusion stage ``i``: ``coarse`` upsampled x2, cropped from ``offset`` to the size of
        ``detail``, concatenated after ``detail``, then the conv, BatchNorm and ReLU."""

    def head(self, x: Any, pads: Pads) -> Any:
        """The head: conv, BatchNorm, ReLU, 1x1 conv, sigmoid: alpha ``[B, 1, h, w]``."""

    def empty(self, like: Any, shape: tuple[int, int, int, int]) -> Any:
        """An uninitialised map of ``shape`` for the maps of ``like``'s kind."""

    def label(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A profiler range around the work of one stage."""


class _Map(NamedTuple):
    """A decoder map of ``size``, held for the part that starts at ``at``."""

    array: Any
    at: tuple[int, int]
    size: tuple[int, int]

    def read(self, region: Region) -> Any:
        return crop(self.array, region, self.at)


def _compute(boxes: Sequence[Region], size: tuple[int, int], box_fn, stages) -> _Map | None:
    """A map of ``size`` computed box by box (``box_fn(box)``: the map over ``box``), held
    for the hull of the boxes (None without boxes)."""
    if not boxes:
        return None
    held = hull(*boxes)
    out = None
    for box in boxes:
        values = box_fn(box)
        if out is None:
            (y0, y1), (x0, x1) = held
            out = stages.empty(values, (values.shape[0], values.shape[1], y1 - y0, x1 - x0))
        crop(out, box, origin(held))[...] = values
    return _Map(out, origin(held), size)


def decode_plan(
    plan: DecoderPlan,
    spec: DecoderSpec,
    sizes: Sequence[tuple[int, int]],
    features: Any,
    images: Any,
    stages: DecoderStages,
) -> Iterator[tuple[Region, Any]]:
    """Alpha of every head box of ``plan``.

    Args:
        plan: what to compute (:func:`~modeling.lean.blocks.plan_decoder`).
        spec: the decoder's conv geometry.
        sizes: map size per scale (``sizes[n]``: the features').
        features: ``[B, C, h, w]`` backbone features of the tile.
        images: ``[B, 4, H, W]`` normalised input of the tile (D0).
        stages: the backend.

    Yields:
        ``(box, alpha)`` per output box, alpha ``[B, 1, h, w]``.
    """
    if not plan.head:
        return
    n = len(spec.fusions)
    details: list[_Map | None] = [_Map(images, (0, 0), sizes[0])]
    for k, boxes in enumerate(plan.details, start=1):
        below = details[k - 1]

        def stride_down(box: Region, k=k, below=below) -> Any:
            region = spec.convstream[k - 1].reads(box)
            inside = clip(region, below.size)
            return stages.stride_down(k, below.read(inside), margins(region, inside))

        with stages.label(f"decoder.convstream{k}"):
            details.append(_compute(boxes, sizes[k], stride_down, stages))
    coarse = _Map(features, (0, 0), sizes[n])

    def fuse(i: int, box: Region, detail: _Map, coarse: _Map) -> Any:
        region = spec.fusions[i].reads(box)
        inside = clip(region, detail.size)
        source = tuple(up_need(span, size) for span, size in zip(inside, coarse.size))
        offset = (inside[0][0] - 2 * source[0][0], inside[1][0] - 2 * source[1][0])
        return stages.fuse(
            i, detail.read(inside), coarse.read(source), offset, margins(region, inside)
        )

    for i, boxes in enumerate(plan.fusions):
        scale = n - 1 - i
        with stages.label(f"decoder.fusion{i}"):
            coarse = _compute(
                boxes,
                sizes[scale],
                lambda box, i=i, d=details[scale], c=coarse: fuse(i, box, d, c),
                stages,
            )
        details[scale] = None  # read by this stage only
    for box, under in zip(plan.head, plan.under_head, strict=True):
        with stages.label(f"decoder.fusion{n - 1}"):
            last = _Map(fuse(n - 1, under, details[0], coarse), origin(under), sizes[0])
        with stages.label("decoder.head"):
            region = spec.head.reads(box)
            alpha = stages.head(last.read(under), margins(region, under))
        yield box, alpha
