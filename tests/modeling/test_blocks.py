"""The block-sparse decoder plan (modeling/lean/blocks.py): boxes that cover what is needed,
once, and what merging them does."""

from __future__ import annotations

import numpy as np
import pytest

from modeling.lean import blocks
from modeling.lean.blocks import BoxCost, DecoderSpec, group_boxes, map_sizes, plan_decoder
from modeling.lean.cone import area, clip
from tests.helpers import build_tiny_mematte


def _assert_disjoint_cover(mask: np.ndarray, boxes: list, max_rows: int, cell: int) -> None:
    covered = np.zeros(mask.shape, dtype=int)
    for (y0, y1), (x0, x1) in boxes:
        assert 0 <= y0 < y1 <= mask.shape[0] and 0 <= x0 < x1 <= mask.shape[1]
        assert y1 - y0 <= max(max_rows, cell)
        covered[y0:y1, x0:x1] += 1
    assert covered.max() == 1  # every pixel at most once
    assert (covered[mask] == 1).all()  # every needed pixel


@pytest.mark.parametrize(
    ("density", "cell", "max_rows"), [(0.001, 64, 128), (3e-4, 16, 24), (0.2, 8, 5)]
)
def test_boxes_cover_the_mask_once_within_the_row_limit(density, cell, max_rows):
    mask = np.random.default_rng(0).random((700, 913)) < density
    boxes = group_boxes(mask, cell, BoxCost(1000), max_rows=max_rows)
    _assert_disjoint_cover(mask, boxes, max_rows, cell)
    for (y0, y1), (x0, x1) in boxes:  # each box is shrunk to what it must hold
        part = mask[y0:y1, x0:x1]
        assert part[0].any() and part[-1].any() and part[:, 0].any() and part[:, -1].any()


def test_neighbouring_boxes_merge_where_their_hull_costs_less():
    mask = np.zeros((64, 64), dtype=bool)
    mask[2:6, 2:6] = mask[2:6, 40:44] = True  # in two 16 px cells of a row, one cell apart
    apart = group_boxes(mask, 16, BoxCost(1_000_000))  # an expensive pixel: keep them apart
    assert apart == [((2, 6), (2, 6)), ((2, 6), (40, 44))]
    merged = group_boxes(mask, 16, BoxCost(1))  # a cheap pixel: one call instead of two
    assert merged == [((2, 6), (2, 44))]


def test_runs_of_the_same_cells_stack_up_to_the_row_limit():
    mask = np.zeros((400, 96), dtype=bool)
    mask[0:300, 20:30] = True  # a bar over 19 cell rows of 16 px: 8 at most per box
    mask[340:400, 20:30] = True  # the same columns after two empty cell rows
    mask[340:350, 60:70] = True  # and another run beside it
    boxes = group_boxes(mask, 16, BoxCost(1_000_000), max_rows=128)  # no merging
    assert boxes == [
        ((0, 128), (20, 30)),
        ((128, 256), (20, 30)),
        ((256, 300), (20, 30)),
        ((340, 350), (60, 70)),
        ((340, 400), (20, 30)),
    ]


def test_a_run_that_changes_its_cells_starts_a_new_box():
    mask = np.zeros((64, 64), dtype=bool)
    mask[0:20, 4:12] = True  # cell rows 0-1, cell column 0
    mask[20:40, 4:40] = True  # then wider: cell columns 0-2 from cell row 1 on
    assert group_boxes(mask, 16, BoxCost(1_000_000)) == [((0, 16), (4, 12)), ((16, 40), (4, 40))]


@pytest.mark.parametrize(("gap", "merged"), [(10, True), (120, False)])
def test_stacked_boxes_merge_within_the_row_limit_only(gap, merged):
    mask = np.zeros((256, 64), dtype=bool)
    mask[0:8, 0:64] = mask[8 + gap : 16 + gap, 0:64] = True
    boxes = group_boxes(mask, 16, BoxCost(1), max_rows=128)
    assert boxes == (
        [((0, 16 + gap), (0, 64))]
        if merged
        else [((0, 8), (0, 64)), ((8 + gap, 16 + gap), (0, 64))]
    )


def test_a_merged_hull_never_covers_another_box():
    boxes = [((0, 4), (0, 4)), ((0, 4), (20, 24)), ((2, 3), (10, 12))]  # the third between
    merged = blocks._merge(boxes, BoxCost(1), max_rows=128)  # every merge is cheaper
    mask = np.zeros((4, 24), dtype=bool)
    for (y0, y1), (x0, x1) in boxes:
        mask[y0:y1, x0:x1] = True
    _assert_disjoint_cover(mask, merged, 128, 1)
    assert len(merged) < len(boxes)  # and the merges that leave it clear are made


def test_merging_compares_each_box_with_a_window_of_neighbours_only():
    mask = np.zeros((640, 640), dtype=bool)
    mask[::32, ::32] = True  # one pixel in every other 16 px cell: 400 boxes, none worth merging
    calls = []

    def cost(box):
        calls.append(box)
        return BoxCost(1_000_000)(box)

    boxes = group_boxes(mask, 16, cost)
    assert len(boxes) == 400
    assert len(calls) <= 3 * blocks.MERGE_WINDOW * len(boxes)  # all pairs: 3 * 79800


def test_the_plan_of_all_pixels_is_one_box_per_map_and_strips_of_rows():
    decoder = build_tiny_mematte().decoder
    spec = DecoderSpec.of(decoder)
    sizes = map_sizes((256, 200), (16, 12), len(spec.fusions))
    plan = plan_decoder(spec, sizes, np.ones((256, 200), dtype=bool), (0, 0))
    assert [len(boxes) for boxes in plan.details] == [1, 1, 1]  # at most 128 rows at 1/2
    assert plan.head == [((0, 128), (0, 200)), ((128, 256), (0, 200))]
    work = plan.work(spec)
    assert work["head"]["pixels"] == 256 * 200
    assert work["fusion3"]["pixels"] == area(((0, 129), (0, 200))) + area(((127, 256), (0, 200)))
    assert work["convstream1"]["pixels"] == 128 * 100  # D1, the whole 1/2 map, once


def test_the_plan_needs_each_stage_only_around_the_wanted_blocks(monkeypatch):
    monkeypatch.setattr(blocks, "DECODER_BLOCK", 32)
    spec = DecoderSpec.of(build_tiny_mematte().decoder)
    sizes = map_sizes((512, 512), (32, 32), len(spec.fusions))
    wanted = np.zeros((512, 512), dtype=bool)
    wanted[300, 400] = True
    plan = plan_decoder(spec, sizes, wanted, (0, 0))
    assert plan.head == [((300, 301), (400, 401))]
    assert plan.under_head == [clip(((299, 302), (399, 402)), sizes[0])]
    for k, boxes in enumerate(plan.details, start=1):  # near (300 / 2**k, 400 / 2**k) only
        (((y0, y1), (x0, x1)),) = boxes
        assert y0 <= 300 // 2**k < y1 and x0 <= 400 // 2**k < x1 and area(boxes[0]) < 40 * 40
    assert plan_decoder(spec, sizes, np.zeros((512, 512), dtype=bool), (0, 0)).head == []
