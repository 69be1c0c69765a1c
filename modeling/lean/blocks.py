"""The block-sparse plan of a lean decoder call: which boxes of every decoder map to compute.

The known-region clamp overwrites every output pixel that the trimap knows, so a clamped decoder
call needs only the output blocks (``DECODER_BLOCK`` px squares on the image's grid) that hold an
unknown pixel. Walking the decoder backwards from them (:mod:`~modeling.lean.cone`) gives, for
every map, the pixels those blocks depend on; each map's pixels are grouped into boxes
(:func:`group_boxes`): the cells of the block grid at the map's scale that hold such pixels, runs
of them along a cell row (vertical neighbours with the same run merged), each box shrunk to the
pixels it must hold and split at ``DECODER_BOX_ROWS`` rows; then neighbouring boxes (in reading
order, ``MERGE_WINDOW`` apart at most) are merged wherever computing their hull costs less than
computing them apart. The cost of a box (:class:`BoxCost`) is its multiply-adds plus
``DECODER_BOX_OVERHEAD_MACS`` for the fixed cost of its kernel calls. Every pixel of a map is
computed at most once; the last fusion stage runs per output box, on the output box plus the
one-pixel ring the head reads, so neighbouring output boxes merge where that saves more than it
adds.

Map names: ``D1 .. D{n-1}`` the conv stream's detail maps (scale k = 1 / 2**k of the input; D0 is
the input itself), ``F0 .. F{n-1}`` the fusion stages' outputs (``F{i}`` at scale ``n - 1 - i``),
the head's logits at scale 0; ``n`` is the number of fusion stages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .cone import ConvGeometry, Region, area, clip, hull, up_need
from .constants import DECODER_BLOCK, DECODER_BOX_OVERHEAD_MACS, DECODER_BOX_ROWS

# How many boxes before a box (in reading order) it may merge with: the neighbours worth merging
# are the boxes of the same or the previous cell rows close by; a bounded window keeps the cost
# comparisons linear in the boxes (a map of scattered unknown pixels has hundreds).
MERGE_WINDOW = 8

__all__ = ["BoxCost", "DecoderPlan", "DecoderSpec", "group_boxes", "map_sizes", "plan_decoder"]


@dataclass(frozen=True)
class DecoderSpec:
    """What the plan needs of a detail-capture decoder: the geometry of its convs.

    Attributes:
        convstream: the conv stream's stride-2 convs, D0 -> D1 -> ... (n - 1 of them).
        fusions: the fusion stages' convs, F0 (coarsest) to F{n-1} (full resolution).
        head: the head's 3x3 conv.
        head_out: the head's 1x1 output conv.
    """

    convstream: tuple[ConvGeometry, ...]
    fusions: tuple[ConvGeometry, ...]
    head: ConvGeometry
    head_out: ConvGeometry

    @classmethod
    def of(cls, decoder: Any) -> DecoderSpec:
        """The spec of a ``DetailCapture`` module."""
        head = decoder.matting_head.matting_convs
        return cls(
            tuple(ConvGeometry.of(block.conv) for block in decoder.convstream.convs),
            tuple(ConvGeometry.of(fusion.conv.conv) for fusion in decoder.fusion_blks),
            ConvGeometry.of(head[0]),
            ConvGeometry.of(head[-1]),
        )

    def to_dict(self) -> dict:
        """JSON-ready form (the onnxruntime deployment's manifest holds it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict) -> DecoderSpec:
        def geometry(conv: dict) -> ConvGeometry:
            return ConvGeometry(
                tuple(conv["kernel"]), tuple(conv["stride"]), tuple(conv["padding"]), conv["macs"]
            )

        return cls(
            tuple(geometry(c) for c in spec["convstream"]),
            tuple(geometry(c) for c in spec["fusions"]),
            geometry(spec["head"]),
            geometry(spec["head_out"]),
        )


@dataclass(frozen=True)
class BoxCost:
    """Cost of computing a box of a map, in multiply-adds: ``macs`` per pixel of the box, plus
    ``under_macs`` per pixel of what ``under`` reads of the map below (a stage computed on that
    part for this box only: the last fusion stage under the head), plus
    ``DECODER_BOX_OVERHEAD_MACS`` for the fixed cost of the box's kernel calls."""

    macs: int
    under_macs: int = 0
    under: ConvGeometry | None = None

    def __call__(self, box: Region) -> float:
        below = area(self.under.reads(box)) if self.under is not None else 0
        return self.macs * area(box) + self.under_macs * below + DECODER_BOX_OVERHEAD_MACS


@dataclass(frozen=True)
class DecoderPlan:
    """Boxes to compute, per map, in the coordinates of the decoder call's maps.

    Attributes:
        details: ``details[k - 1]``: boxes of D{k}, k = 1 .. n - 1.
        fusions: ``fusions[i]``: boxes of F{i}, i = 0 .. n - 2.
        head: output boxes (scale 0).
        under_head: per head box, the region of F{n-1} that the head reads (computed for that
            box alone).
    """

    details: list[list[Region]]
    fusions: list[list[Region]]
    head: list[Region]
    under_head: list[Region]

    def work(self, spec: DecoderSpec) -> dict[str, dict[str, int]]:
        """Pixels, boxes and conv multiply-adds of every stage (``convstream{k}``,
        ``fusion{i}``, ``head``: the labels of the lean decoder's profiler ranges)."""
        work = {}
        for k, boxes in enumerate(self.details, start=1):
            work[f"convstream{k}"] = _work(boxes, spec.convstream[k - 1].macs)
        for i, boxes in enumerate(self.fusions):
            work[f"fusion{i}"] = _work(boxes, spec.fusions[i].macs)
        work[f"fusion{len(spec.fusions) - 1}"] = _work(self.under_head, spec.fusions[-1].macs)
        work["head"] = _work(self.head, spec.head.macs + spec.head_out.macs)
        return work


def _work(boxes: Sequence[Region], macs: int) -> dict[str, int]:
    pixels = sum(area(box) for box in boxes)
    return {"pixels": pixels, "boxes": len(boxes), "macs": pixels * macs}


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index runs of True in a 1-d boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], row, [False])).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _shrink(mask: np.ndarray, box: Region) -> Region | None:
    """``box`` shrunk to the True pixels of ``mask`` inside it (None: there are none)."""
    (y0, y1), (x0, x1) = box
    part = mask[y0:y1, x0:x1]
    rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
    if not rows.size:
        return None
    return (y0 + int(rows[0]), y0 + int(rows[-1]) + 1), (x0 + int(cols[0]), x0 + int(cols[-1]) + 1)


def _overlaps(a: Region, b: Region) -> bool:
    return all(lo_a < hi_b and lo_b < hi_a for (lo_a, hi_a), (lo_b, hi_b) in zip(a, b))


def _merge(boxes: list[Region], cost: Callable[[Region], float], max_rows: int) -> list[Region]:
    """Replace a box and one of the ``MERGE_WINDOW`` boxes before it (in reading order) by their
    hull wherever that costs less and the hull stays within ``max_rows`` rows and clear of the
    other boxes. One pass: at most ``MERGE_WINDOW`` candidate pairs per box (3 cost calls each),
    where trying every pair until none merges grew with the cube of the boxes."""
    merged: list[Region] = []
    boxes = sorted(boxes)
    for n, box in enumerate(boxes):
        for k in range(len(merged) - 1, max(len(merged) - MERGE_WINDOW, 0) - 1, -1):
            joint = hull(merged[k], box)
            if joint[0][1] - joint[0][0] > max_rows:
                continue
            if cost(joint) >= cost(merged[k]) + cost(box):
                continue
            others = [*merged[:k], *merged[k + 1 :], *boxes[n + 1 :]]
            if any(_overlaps(joint, other) for other in others):
                continue
            merged[k] = joint
            break
        else:
            merged.append(box)
    return sorted(merged)


def group_boxes(
    mask: np.ndarray, cell: int, cost: Callable[[Region], float], max_rows: int | None = None
) -> list[Region]:
    """Disjoint boxes that cover the True pixels of ``mask`` (see the module docstring).

    Args:
        mask: ``[h, w]`` bool, the pixels of a map that must be computed.
        cell: side of the grid cells (on the mask's origin) that boxes are made of.
        cost: cost of computing a box (:class:`BoxCost`).
        max_rows: boxes are split at this many rows (the cells that fit in it; default
            ``DECODER_BOX_ROWS``).

    Returns:
        boxes ``((y0, y1), (x0, x1))`` in the mask's coordinates, sorted.
    """
    max_rows = DECODER_BOX_ROWS if max_rows is None else max_rows
    h, w = mask.shape
    grid_h, grid_w = -(-h // cell), -(-w // cell)
    cells = np.zeros((grid_h * cell, grid_w * cell), dtype=bool)
    cells[:h, :w] = mask
    # [grid_h * cell, grid_w * cell] -> [grid_h, cell, grid_w, cell] -> any over each cell
    cells = cells.reshape(grid_h, cell, grid_w, cell).any(axis=(1, 3))
    cells_per_box = max(1, max_rows // cell)
    runs: list[list[int]] = []  # [first cell row, last cell row + 1, first col, last col + 1]
    open_runs: dict[tuple[int, int], list[int]] = {}  # the runs that reach the previous row
    for r in range(grid_h):
        reaching: dict[tuple[int, int], list[int]] = {}
        for c0, c1 in _runs(cells[r]):
            run = open_runs.get((c0, c1))
            if run is not None and run[1] - run[0] < cells_per_box:
                run[1] = r + 1
            else:
                run = [r, r + 1, c0, c1]
                runs.append(run)
            reaching[c0, c1] = run
        open_runs = reaching
    boxes = []
    for r0, r1, c0, c1 in runs:
        box = _shrink(mask, ((r0 * cell, min(r1 * cell, h)), (c0 * cell, min(c1 * cell, w))))
        if box is not None:
            boxes.append(box)
    return _merge(boxes, cost, max_rows)


def map_sizes(
    input_hw: tuple[int, int], features_hw: tuple[int, int], num_fusions: int
) -> list[tuple[int, int]]:
    """Decoder map sizes per scale: scale k is 1 / 2**k of the input ``(H, W)`` for k below
    ``num_fusions``; the last entry is the features' size."""
    H, W = input_hw
    sizes = [(-(-H // 2**k), -(-W // 2**k)) for k in range(num_fusions)]
    return [*sizes, tuple(features_hw)]


def _mask(size: tuple[int, int], regions: Sequence[Region]) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    for (y0, y1), (x0, x1) in regions:
        mask[y0:y1, x0:x1] = True
    return mask


def plan_decoder(
    spec: DecoderSpec,
    sizes: Sequence[tuple[int, int]],
    wanted: np.ndarray,
    at: tuple[int, int],
) -> DecoderPlan:
    """The boxes of every map that the ``wanted`` output pixels depend on.

    Args:
        spec: the decoder's convs (the dependency rules and the costs).
        sizes: ``sizes[k]``: map size at scale k (1 / 2**k of the input), ``sizes[n]`` the
            features' size.
        wanted: ``[h, w]`` bool, the output pixels to compute, of the region at ``at``.
        at: the region's origin in the maps of scale 0; blocks lie on its grid.

    Returns:
        the :class:`DecoderPlan` (empty lists when nothing is wanted).
    """
    n = len(spec.fusions)
    head_cost = BoxCost(spec.head.macs + spec.head_out.macs, spec.fusions[-1].macs, spec.head)
    head = [
        ((y0 + at[0], y1 + at[0]), (x0 + at[1], x1 + at[1]))
        for (y0, y1), (x0, x1) in group_boxes(wanted, DECODER_BLOCK, head_cost)
    ]
    under_head = [clip(spec.head.reads(box), sizes[0]) for box in head]
    # Walking up: fusion_need, the regions wanted of the next coarser fusion map;
    # detail_need[k], of the detail map D{k}.
    fusion_need = [
        _upsampled(clip(spec.fusions[-1].reads(r), sizes[0]), sizes[1]) for r in under_head
    ]
    detail_need: list[list[Region]] = [[] for _ in range(n)]
    fusions: list[list[Region]] = [[] for _ in range(n - 1)]
    for i in reversed(range(n - 1)):
        scale = n - 1 - i
        conv = spec.fusions[i]
        fusions[i] = group_boxes(_mask(sizes[scale], fusion_need), _cell(scale), BoxCost(conv.macs))
        reads = [clip(conv.reads(box), sizes[scale]) for box in fusions[i]]
        detail_need[scale] += reads
        fusion_need = [_upsampled(region, sizes[scale + 1]) for region in reads]
    details: list[list[Region]] = [[] for _ in range(n - 1)]
    for k in reversed(range(1, n)):
        conv = spec.convstream[k - 1]
        details[k - 1] = group_boxes(_mask(sizes[k], detail_need[k]), _cell(k), BoxCost(conv.macs))
        if k > 1:
            detail_need[k - 1] += [clip(conv.reads(box), sizes[k - 1]) for box in details[k - 1]]
    return DecoderPlan(details, fusions, head, under_head)


def _upsampled(region: Region, size: tuple[int, int]) -> Region:
    """What a x2 bilinear upsampling reads of a map of ``size`` for ``region``."""
    return tuple(up_need(span, n) for span, n in zip(region, size, strict=True))


def _cell(scale: int) -> int:
    """Cell side at a scale: the block grid at that resolution (at least one pixel)."""
    return max(1, math.ceil(DECODER_BLOCK / 2**scale))
