"""data.trimap.trimap_from_mask: the Euclidean band on a disk, thresholds, widths, edge cases."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from data.trimap import (
    AUTO_WIDTH,
    auto_unknown_width,
    binarize_mask,
    non_trimap_share,
    parse_unknown_width,
    trimap_from_mask,
    unknown_width_pixels,
)

SIDE = 161
CENTRE = 80.0
RADIUS = 50.0


def _radius_map() -> np.ndarray:
    yy, xx = np.mgrid[:SIDE, :SIDE].astype(np.float64)
    return np.hypot(yy - CENTRE, xx - CENTRE)


@pytest.mark.parametrize("width", [1, 4, 12, 25])
def test_band_on_a_disk_is_the_euclidean_distance_to_its_boundary(width):
    radius = _radius_map()
    trimap = trimap_from_mask(radius <= RADIUS, width)
    distance = np.abs(radius - RADIUS)  # to the continuous circle
    assert set(np.unique(trimap)) == {0, 128, 255}
    assert (trimap[distance <= width - 1] == 128).all()  # inside the band, up to 1 px
    assert (trimap[distance > width + 1] != 128).all()
    assert (trimap[(trimap != 128) & (radius < RADIUS)] == 255).all()
    assert (trimap[(trimap != 128) & (radius > RADIUS)] == 0).all()


def test_band_width_counts_pixels_from_the_boundary_on_each_side():
    mask = np.zeros((5, 12), np.uint8)
    mask[:, 6:] = 255  # boundary between columns 5 and 6
    row = trimap_from_mask(mask, 2)[2]
    assert row.tolist() == [0, 0, 0, 0, 128, 128, 128, 128, 255, 255, 255, 255]
    assert (trimap_from_mask(mask, 0) == np.where(mask > 0, 255, 0)).all()  # no band


def test_soft_masks_are_thresholded_at_half_their_range():
    radius = _radius_map()
    soft = np.clip((RADIUS + 8 - radius) / 16, 0, 1)  # 0.5 on the circle of radius RADIUS
    hard = radius < RADIUS
    for mask in (soft, soft.astype(np.float32), np.round(soft * 255).astype(np.uint8)):
        assert (binarize_mask(mask) == hard).mean() > 0.995
        np.testing.assert_array_equal(
            trimap_from_mask(mask, 6), trimap_from_mask(binarize_mask(mask), 6)
        )
    levels = np.array([[0, 127, 128, 255]], np.uint8)
    assert binarize_mask(levels).tolist() == [[False, False, True, True]]
    values = np.array([[0.0, 0.5, 0.5001, 1.0]])
    assert binarize_mask(values).tolist() == [[False, False, True, True]]
    assert binarize_mask(np.array([[32767, 32768]], np.uint16)).tolist() == [[False, True]]


def test_fraction_of_the_shorter_side():
    assert unknown_width_pixels(0.05, (200, 400)) == pytest.approx(10.0)
    assert unknown_width_pixels(10, (200, 400)) == 10.0
    assert unknown_width_pixels(12.5, (200, 400)) == 12.5  # floats from 1 on are pixels
    radius = _radius_map()
    np.testing.assert_array_equal(
        trimap_from_mask(radius <= RADIUS, 0.05), trimap_from_mask(radius <= RADIUS, 0.05 * SIDE)
    )


def test_bad_widths_and_masks_are_errors():
    mask = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match=">= 0"):
        trimap_from_mask(mask, -1)
    with pytest.raises(ValueError, match="number"):
        trimap_from_mask(mask, "3")
    with pytest.raises(ValueError, match="int64"):
        trimap_from_mask(np.zeros((4, 4), np.int64), 2)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        trimap_from_mask(np.zeros((4, 4, 3), np.uint8), 2)


def test_empty_and_full_masks_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="data.trimap"):
        empty = trimap_from_mask(np.zeros((6, 7), np.uint8), 2)
        assert (empty == 0).all() and "empty" in caplog.text
        caplog.clear()
        full = trimap_from_mask(np.ones((6, 7), bool), 2)
        assert (full == 255).all() and "full" in caplog.text
        caplog.clear()
        trimap_from_mask(np.eye(6, dtype=np.uint8), 2)  # a 0/1 mask read as 8-bit
        assert "0/255" in caplog.text


def test_non_trimap_share():
    levels = np.array([0, 128, 255, 127, 1, 255, 0, 128], np.uint8)
    assert non_trimap_share(levels) == pytest.approx(0.25)
    assert non_trimap_share(np.zeros(0, np.uint8)) == 0.0


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((20, 30, 120, 150), 0.02 * np.hypot(100, 120)),  # 100 x 120 px box: 3.1 px -> minimum
        ((0, 0, 1000, 800), 0.02 * np.hypot(1000, 800)),  # 25.6 px
        ((0, 0, 8000, 6000), 160.0),  # 200 px: the maximum
    ],
)
def test_auto_width_is_a_share_of_the_mask_diagonal_within_a_pixel_range(box, expected):
    y0, x0, y1, x1 = box
    mask = np.zeros((max(y1, 200), max(x1, 200)), bool)
    mask[y0:y1, x0:x1] = True
    width = auto_unknown_width(mask)
    assert width == pytest.approx(float(np.clip(expected, 4.0, 160.0)))
    assert unknown_width_pixels(AUTO_WIDTH, mask.shape, mask) == width
    if mask.size < 2_000_000:  # the trimap of "auto" is the trimap of that width
        assert np.array_equal(trimap_from_mask(mask, AUTO_WIDTH), trimap_from_mask(mask, width))


def test_auto_width_needs_the_mask_and_parses_from_the_command_line():
    assert parse_unknown_width("auto") == AUTO_WIDTH
    assert parse_unknown_width("12") == 12 and parse_unknown_width("0.02") == 0.02
    with pytest.raises(ValueError, match="relative to a mask"):
        unknown_width_pixels(AUTO_WIDTH, (10, 10))
    with pytest.raises(ValueError):
        parse_unknown_width("wide")
    assert auto_unknown_width(np.zeros((8, 8), bool)) == 4.0  # empty: the minimum
