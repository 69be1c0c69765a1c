"""Clip folders (frame order, names, dataset layouts) and the synthetic clip generator."""

from __future__ import annotations

import numpy as np
import pytest

from data.clips import clip_folders, frame_name, frame_number, list_frames
from data.image_io import read_map_u8, read_rgb_levels, write_image
from data.synthetic_clips import ClipMotion, iter_clip, write_clip


def _touch(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.full((4, 4), value, np.uint8))


def test_frames_are_ordered_by_the_number_in_their_names(tmp_path):
    for name in ("frame_10", "frame_2", "frame_1"):
        _touch(tmp_path / f"{name}.png")
    assert [p.stem for p in list_frames(tmp_path)] == ["frame_1", "frame_2", "frame_10"]
    assert frame_number("frame_0012") == 12
    assert frame_number("cover") is None
    assert frame_name(7) == "00007"


def test_two_files_for_one_frame_are_refused(tmp_path):
    _touch(tmp_path / "0001.png")
    _touch(tmp_path / "0001.jpg")
    with pytest.raises(ValueError, match="0001"):
        list_frames(tmp_path)


@pytest.mark.parametrize(
    "layout", ["{root}/pha/{clip}/0.png", "{root}/{clip}/pha/0.png", "{root}/{clip}/0.png"]
)
def test_the_three_clip_layouts_are_found(tmp_path, layout):
    for clip in ("a", "b"):
        _touch(tmp_path / layout.format(root="root", clip=clip).replace("root/", "", 0))
    root = tmp_path / "root"
    folders = clip_folders(root)
    assert sorted(folders) == ["a", "b"]
    assert all(list_frames(folder) for folder in folders.values())


def test_synthetic_clips_are_seeded_move_and_have_soft_edges():
    motion = ClipMotion(subject_speed=2.0, rotation=1.0, sway=2.0)
    first = list(iter_clip(3, (128, 160), 4, motion))
    again = list(iter_clip(3, (128, 160), 4, motion))
    for a, b in zip(first, again):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.alpha, b.alpha)
    frame = first[0]
    assert frame.image.shape == (128, 160, 3) and frame.image.dtype == np.uint8
    assert frame.alpha.shape == (128, 160) and frame.foreground.shape == (128, 160, 3)
    fractional = (frame.alpha > 0.01) & (frame.alpha < 0.99)
    assert fractional.mean() > 0.01  # strands, blur and veil
    assert not np.array_equal(first[0].alpha, first[-1].alpha)  # the subject moves
    # The composite is the foreground over something else where alpha < 1.
    opaque = frame.alpha > 0.995
    assert np.abs(frame.image[opaque].astype(int) - frame.foreground[opaque]).max() <= 1


def test_write_clip_writes_the_release_layout(tmp_path):
    write_clip(tmp_path, "clip", 0, (48, 64), 3)
    for folder in ("com", "pha", "fgr", "trimap"):
        assert [p.name for p in list_frames(tmp_path / folder / "clip")] == [
            "00000.png",
            "00001.png",
            "00002.png",
        ]
    mask = read_map_u8(tmp_path / "mask" / "clip.png")
    alpha = read_map_u8(tmp_path / "pha" / "clip" / "00000.png")
    assert np.array_equal(mask > 0, alpha > 127)
    assert read_rgb_levels(tmp_path / "com" / "clip" / "00000.png").shape == (48, 64, 3)
    trimap = read_map_u8(tmp_path / "trimap" / "clip" / "00000.png")
    fractional = (alpha > 0) & (alpha < 255)
    assert (trimap[fractional] == 128).all()
