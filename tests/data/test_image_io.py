"""data.image_io: truncated files are unreadable whatever the decoder makes of them, the check of
written files, native-level readers and the trimap policy (other values refused, or snapped to
the nearest level on request)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.image_io import (
    BadSampleError,
    UnreadableImageError,
    is_complete_image,
    read_map_u8,
    read_rgb_levels,
    read_trimap_levels,
)
from data.trimap import snap_trimap
from tests.helpers import DEMO_DIR, DEMO_NAMES
from utils.device import to_unit_float
from utils.levels import unit_float_array


def _smooth(shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur((rng.random(shape) * 255).astype(np.uint8), (0, 0), 3)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    image = _smooth((64, 80, 3))
    paths = {}
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"whole{suffix}"
        cv2.imwrite(str(path), image)
        paths[suffix] = path
    return paths


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_a_truncated_file_is_unreadable_and_named(files, tmp_path, suffix, keep):
    data = files[suffix].read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UnreadableImageError, match=f"cut\\{suffix}.*truncated"):
        read_rgb_levels(cut)
    with pytest.raises(UnreadableImageError, match=f"cut\\{suffix}"):
        read_map_u8(cut)
    assert not is_complete_image(cut)
    assert is_complete_image(files[suffix])


def test_data_after_the_jpeg_end_marker_is_not_a_truncation(files, tmp_path):
    """Phone photos may carry a video after the JPEG: the image itself is whole."""
    extended = tmp_path / "motion.jpg"
    extended.write_bytes(files[".jpg"].read_bytes() + b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    assert np.array_equal(read_rgb_levels(extended), read_rgb_levels(files[".jpg"]))


def test_incomplete_outputs(files, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image, but long enough to have two ends to check")
    jpeg_as_png = tmp_path / "jpeg.png"
    jpeg_as_png.write_bytes(files[".jpg"].read_bytes())
    for name in ("empty.png", "text.png", "jpeg.png", "missing.png"):
        assert not is_complete_image(tmp_path / name), name


def test_native_levels_and_unit_floats(tmp_path):
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)[:, :, None].repeat(3, axis=2)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    levels = read_rgb_levels(tmp_path / "deep.png")
    assert levels.dtype == np.uint16 and np.array_equal(levels, deep)
    np.testing.assert_array_equal(to_unit_float(levels, "cpu").numpy(), deep / np.float32(65535))
    eight = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_array_equal(to_unit_float(eight, "cpu").numpy(), eight / np.float32(255))
    for each in (levels, eight, np.arange(65536, dtype=np.uint16), np.arange(256, dtype=np.uint8)):
        # the torch-free conversion (readers, onnxruntime predictor): the same floats
        np.testing.assert_array_equal(unit_float_array(each), to_unit_float(each).numpy())


def test_unit_float_copies_on_request():
    floats = torch.rand(4, 5, 3)
    assert to_unit_float(floats, "cpu") is floats
    copied = to_unit_float(floats, "cpu", copy=True)
    assert copied.data_ptr() != floats.data_ptr() and torch.equal(copied, floats)
    channels_first = torch.arange(60, dtype=torch.uint8).view(3, 4, 5)
    for levels in (channels_first.permute(1, 2, 0), channels_first.permute(1, 2, 0).float()):
        converted = to_unit_float(levels, "cpu", copy=True)
        assert converted.is_contiguous() and converted.data_ptr() != levels.data_ptr()
    np.testing.assert_array_equal(converted.numpy(), channels_first.permute(1, 2, 0).numpy())


def test_trimap_values_other_than_the_levels_are_refused_with_the_fix_or_snapped(tmp_path, caplog):
    trimap = np.full((10, 10), 128, np.uint8)
    trimap[0, :5] = 77
    cv2.imwrite(str(tmp_path / "soft.png"), trimap)
    with pytest.raises(BadSampleError) as info:
        read_trimap_levels(tmp_path / "soft.png")
    assert info.value.path == tmp_path / "soft.png"
    assert "5.00% of the pixels are neither 0, 128 nor 255" in info.value.reason
    assert "save it losslessly (PNG)" in info.value.reason and "--snap-trimap" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="data.image_io"):
        snapped = read_trimap_levels(tmp_path / "soft.png", snap=True)
    assert np.array_equal(snapped, np.full((10, 10), 128, np.uint8))  # 77 is nearest to 128
    assert "soft.png" in caplog.text and "5.00%" in caplog.text and "snapped" in caplog.text
    caplog.clear()
    cv2.imwrite(str(tmp_path / "clean.png"), np.full((4, 4), 255, np.uint8))
    with caplog.at_level(logging.WARNING, logger="data.image_io"):
        read_trimap_levels(tmp_path / "clean.png")
        read_trimap_levels(tmp_path / "clean.png", snap=True)
    assert not caplog.text


def test_snapping_takes_the_nearest_level_and_unknown_on_a_tie():
    values = np.arange(256, dtype=np.uint8)
    levels = np.array([0, 128, 255])
    distance = np.abs(values[:, None].astype(int) - levels[None, :])
    nearest = levels[distance.argmin(axis=1)]
    tie = (distance == distance.min(axis=1, keepdims=True)).sum(axis=1) > 1
    nearest[tie] = 128
    assert list(np.flatnonzero(tie)) == [64]
    np.testing.assert_array_equal(snap_trimap(values), nearest)
    assert snap_trimap(values).dtype == np.uint8


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_a_trimap_saved_as_jpeg_snaps_back_to_nearly_every_level(tmp_path, quality):
    """The case the option is for: the demo trimaps through JPEG; the nearest level recovers
    all but a few edge pixels even at quality 50 (the training thresholds 85 / 170 lose ten times
    more there)."""
    for name in DEMO_NAMES:
        trimap = cv2.imread(str(DEMO_DIR / "trimaps" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        path = tmp_path / f"{name}.jpg"
        cv2.imwrite(str(path), trimap, [cv2.IMWRITE_JPEG_QUALITY, quality])
        with pytest.raises(BadSampleError, match="--snap-trimap"):
            read_trimap_levels(path)
        wrong = int((read_trimap_levels(path, snap=True) != trimap).sum())
        assert wrong <= (10 if quality < 75 else 0), (name, wrong)
