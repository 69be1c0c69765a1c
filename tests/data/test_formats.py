"""Which files the readers take, and how big: a format sweep through the folder reader (every
suffix of IMAGE_EXTENSIONS and some they do not take), and a decoder-bomb sweep (each readable
format declaring more pixels than allowed is refused from its header, before any decoder runs; a
file whose size cannot be read from its header is refused too). The bounds of the decoders
themselves are checked in a fresh process (OpenCV reads its bound when it loads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from data import image_io
from data.image_io import (
    IMAGE_EXTENSIONS,
    ImageTooLargeError,
    UnreadableImageError,
    check_image_size,
    read_map_levels,
    read_rgb_levels,
    read_trimap_levels,
    scan_images,
)
from data.pixel_limits import DECODER_MAX_PIXELS, DEFAULT_MAX_PIXELS
from data.readers import scan_test_set
from tests.helpers import REPO_ROOT
from tests.image_files import declare_size, picture, write_picture

LOSSY = (".jpg", ".jpeg", ".jpe")
# JPEG levels may move this much on a smooth picture.
JPEG_TOLERANCE = 12
# Files the readers do not take: (name, how it is written).
NOT_READ = {
    "radiance.hdr": "hdr",
    "photo.heic": "bytes",
    "notes.txt": "text",
    "noext": "text",
    ".hidden.png": "png",
}
HW = (30, 40)
# Above the default limit but under Pillow's own refusal, and above both.
BOMB_SIZES = [(10_000, 8_000), (16_000, 12_000)]


def _write_not_read(path: Path, kind: str) -> None:
    if kind == "hdr":
        cv2.imwrite(str(path), picture(HW).astype(np.float32) / 255)
    elif kind == "png":
        cv2.imwrite(str(path), picture(HW))
    elif kind == "bytes":
        path.write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    else:
        path.write_text("not an image")


@pytest.fixture
def every_format(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """A generic test set: one image per readable suffix (stem = suffix), each with its trimap,
    and the files of NOT_READ in its image folder; returns the root and each image's levels."""
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "trimaps").mkdir()
    levels = {}
    for index, suffix in enumerate(IMAGE_EXTENSIONS):
        stem = suffix[1:]
        levels[stem] = write_picture(root / "images" / f"{stem}{suffix}", picture(HW, index))
        trimap = np.zeros(HW, np.uint8)
        trimap[:, HW[1] // 2 :] = 255
        trimap[:, HW[1] // 3 : HW[1] // 2] = 128
        cv2.imwrite(str(root / "trimaps" / f"{stem}.png"), trimap)
    for name, kind in NOT_READ.items():
        _write_not_read(root / "images" / name, kind)
    (root / "images" / "sub").mkdir()
    return root, levels


def test_format_sweep_through_the_folder_reader(every_format):
    root, levels = every_format
    test_set = scan_test_set(root)
    assert [item.name for item in test_set.items] == sorted(levels)
    skipped = {entry.path.name: entry.reason for entry in test_set.skipped}
    assert set(skipped) == {*NOT_READ, "sub"}
    assert "format .hdr is not read" in skipped["radiance.hdr"]
    assert "format .heic" in skipped["photo.heic"] and ".webp" in skipped["photo.heic"]
    assert "hidden" in skipped[".hidden.png"] and "folder" in skipped["sub"]
    for item in test_set.items:
        read = read_rgb_levels(item.image_path)
        assert read.shape == (*HW, 3) and read.dtype == np.uint8, item.name
        tolerance = JPEG_TOLERANCE if item.image_path.suffix in LOSSY else 0
        difference = np.abs(read.astype(int) - levels[item.name].astype(int)).max()
        assert difference <= tolerance, item.name
        assert check_image_size(item.image_path) == HW


def test_a_folder_of_formats_it_does_not_read_names_them(tmp_path):
    for folder in ("merged", "trimaps"):
        (tmp_path / folder).mkdir()
    for name in ("a.hdr", "b.heic", "c.exr"):
        (tmp_path / "merged" / name).write_bytes(b"\x00" * 32)
    with pytest.raises(ValueError, match="no image to read") as info:
        scan_test_set(tmp_path)
    for name in ("a.hdr", "b.heic", "c.exr"):
        assert name in str(info.value)
    assert ".webp" in str(info.value)  # the formats it does read


def test_animations_and_pages_give_their_first_frame(tmp_path):
    frames = [picture(HW, seed) for seed in (1, 2)]
    for suffix in (".gif", ".webp", ".png", ".tiff"):
        path = tmp_path / f"animated{suffix}"
        first, *rest = (Image.fromarray(frame) for frame in frames)
        options = {"lossless": True} if suffix == ".webp" else {}
        first.save(path, save_all=True, append_images=rest, **options)
        with Image.open(path) as image:
            assert getattr(image, "n_frames", 1) == 2, suffix
            image.seek(0)
            expected = np.asarray(image.convert("RGB"))
        assert np.array_equal(read_rgb_levels(path), expected), suffix


def forbid_decoding(monkeypatch) -> None:
    """From now on, fail the test if OpenCV or Pillow decodes pixels."""

    def refuse(*args, **kwargs):
        raise AssertionError("a decoder ran")

    monkeypatch.setattr(image_io.cv2, "imdecode", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("size", BOMB_SIZES)
@pytest.mark.parametrize("suffix", IMAGE_EXTENSIONS)
def test_decoder_bomb_sweep(tmp_path, monkeypatch, suffix, size):
    """Each readable format declaring more than the limit is refused from its header, naming
    the file and the size, by every reader; nothing is decoded."""
    path = tmp_path / f"bomb{suffix}"
    write_picture(path, picture(HW))
    declare_size(path, *size)
    forbid_decoding(monkeypatch)
    for reader in (read_rgb_levels, read_trimap_levels, read_map_levels):
        with pytest.raises(ImageTooLargeError, match=f"bomb\\{suffix}") as info:
            reader(path)
        assert str(DEFAULT_MAX_PIXELS) in str(info.value)
        if size[0] * size[1] < 2 * Image.MAX_IMAGE_PIXELS:  # Pillow reads the header
            assert info.value.hw == size[::-1]
            assert f"{size[0]}x{size[1]}" in str(info.value)
    with pytest.raises(ImageTooLargeError):
        check_image_size(path, max_pixels=HW[0] * HW[1] - 1)  # one pixel too large


@pytest.mark.parametrize("name", ["radiance.hdr", "photo.heic", "notes.txt"])
def test_a_file_whose_size_cannot_be_read_from_its_header_is_refused(tmp_path, monkeypatch, name):
    path = tmp_path / name
    _write_not_read(path, NOT_READ[name])
    forbid_decoding(monkeypatch)
    with pytest.raises(UnreadableImageError, match=f"{name}.*its size cannot be read"):
        read_rgb_levels(path)


def test_the_limits_stay_below_every_decoders_refusal():
    assert DEFAULT_MAX_PIXELS <= DECODER_MAX_PIXELS < 2 * Image.MAX_IMAGE_PIXELS


BOUNDED_OPENCV = """
import sys
sys.path.insert(0, {root!r})
import {module}
import cv2, numpy as np
from tests.image_files import png_bomb
from data.pixel_limits import DECODER_MAX_PIXELS
from pathlib import Path
png_bomb(Path({bomb!r}), DECODER_MAX_PIXELS // 8192 + 1, 8192)
try:
    cv2.imdecode(np.fromfile({bomb!r}, np.uint8), cv2.IMREAD_UNCHANGED)
except cv2.error as exc:
    print("refused:", exc.err)
"""


@pytest.mark.slow
@pytest.mark.parametrize("module", ["inference", "predictor.session"])
def test_opencv_is_bounded_in_the_entry_points(tmp_path, module):
    """Once an entry point is imported, OpenCV itself refuses an image above the decoders'
    ceiling (its bound is read when it loads, so a fresh process is needed)."""
    script = BOUNDED_OPENCV.format(root=str(REPO_ROOT), module=module, bomb=str(tmp_path / "b.png"))
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "refused:" in completed.stdout


def test_scan_images_reports_every_entry_it_skips(every_format):
    root, levels = every_format
    images, skipped = scan_images(root / "images")
    assert sorted(path.stem for path in images) == sorted(levels)
    assert len(images) + len(skipped) == len(list((root / "images").iterdir()))
