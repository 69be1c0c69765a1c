"""inference.py --video end to end: the per-frame image results with --temporal off, guidance
(per-frame trimaps and masks, a first-frame mask propagated), outputs and videos (the lossless one
equals the PNGs), resume (byte-identical, also after a kill), damaged and rotated inputs, variable
frame rates, usage errors, the flow mode's temporal stability, sharding and flat memory."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import inference
from data.clips import list_frames
from data.image_io import read_map_levels, read_rgb_levels, write_image
from data.synthetic_clips import ClipMotion, iter_clip, write_clip
from data.trimap import trimap_from_mask
from evaluation.clips import evaluate_clips, match_clips
from tests.helpers import (
    DEMO_CHECKPOINT,
    REPO_ROOT,
    TINY_CONFIG,
    kill_when_written,
    write_test_video,
)

MODEL = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
SIZE = (72, 96)
FRAMES = 6


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two synthetic clips in the release layout (com/, pha/, trimap/, mask/), and clip c0 as a
    lossless video file."""
    root = tmp_path_factory.mktemp("clips")
    motion = ClipMotion(subject_speed=1.0, rotation=0.3, sway=1.0)
    for seed, name in enumerate(("c0", "c1")):
        write_clip(root, name, seed, SIZE, FRAMES, motion)
    frames = [read_rgb_levels(p) for p in list_frames(root / "com" / "c0")]
    write_test_video(root / "c0.mkv", frames)
    return root


def run(*argv: str) -> int:
    return inference.main([*MODEL, "--device", "cpu", *argv])


def run_guided(clips: Path, video: Path, out: Path, *extra: str) -> int:
    """A run of ``video`` guided by clip c0's per-frame trimaps."""
    trimaps = clips / "trimap" / "c0"
    return run(
        "--video", str(video), "--trimap-dir", str(trimaps), *extra, "--output-dir", str(out)
    )


def pngs(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# Lossy videos: compared by their decoded frames (count, timestamps, and every sample within
# LOSSY_LEVELS). In long test processes, re-encoding the same frames with the same x264 options
# (threads=1) gave other bytes, and once frames up to 5 levels apart; the PNGs and the lossless
# video are compared byte for byte.
LOSSY_VIDEOS = (".mp4", ".mov", ".webm")
LOSSY_LEVELS = 8


def decoded(data: bytes) -> list[tuple[int, np.ndarray]]:
    """Every decoded frame of a video file's bytes: its timestamp and its 8-bit RGBA samples."""
    with av.open(io.BytesIO(data)) as container:
        return [
            (frame.pts, frame.to_ndarray(format="rgba").astype(int))
            for frame in container.decode(video=0)
        ]


def _close_frames(got: bytes, expected: bytes) -> bool:
    ours, theirs = decoded(got), decoded(expected)
    return len(ours) == len(theirs) and all(
        pts == other_pts
        and frame.shape == other.shape
        and np.abs(frame - other).max() <= LOSSY_LEVELS
        for (pts, frame), (other_pts, other) in zip(ours, theirs)
    )


def differing(got: dict[str, bytes], expected: dict[str, bytes]) -> list[str]:
    """The names of the files that are missing, extra or hold other contents (lossy videos:
    other decoded frames, see LOSSY_LEVELS)."""

    def same(name: str) -> bool:
        if name not in got or name not in expected:
            return False
        if got[name] == expected[name]:
            return True
        return name.endswith(LOSSY_VIDEOS) and _close_frames(got[name], expected[name])

    return sorted(name for name in got.keys() | expected.keys() if not same(name))


@pytest.mark.slow
def test_temporal_off_gives_the_image_cli_png_of_every_frame(clips, tmp_path):
    frames = list_frames(clips / "com" / "c0")
    trimaps = list_frames(clips / "trimap" / "c0")
    assert (
        run(
            "--image",
            *map(str, frames),
            "--trimap",
            *map(str, trimaps),
            "--output-dir",
            str(tmp_path / "img"),
        )
        == 0
    )
    for video in (clips / "com" / "c0", clips / "c0.mkv"):
        out = tmp_path / video.suffix.lstrip(".")
        code = run_guided(clips, video, out)
        assert code == 0
        written = list_frames(out / "c0" / "pha")
        assert [p.stem for p in written] == [p.stem for p in frames]
        for path in written:
            assert path.read_bytes() == (tmp_path / "img" / path.name).read_bytes(), path


def test_masks_get_the_unknown_width_images_get(clips, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in list_frames(clips / "pha" / "c1"):  # the truth as "another model's masks"
        shutil.copy(path, masks / path.name)
    frames = list_frames(clips / "com" / "c1")
    images = ["--image", *map(str, frames), "--mask", *map(str, list_frames(masks))]
    assert run(*images, "--unknown-width", "auto", "--output-dir", str(tmp_path / "img")) == 0
    code = run(
        "--video",
        str(clips / "com" / "c1"),
        "--mask-dir",
        str(masks),
        "--unknown-width",
        "auto",
        "--output-dir",
        str(tmp_path / "vid"),
    )
    assert code == 0
    for path in frames:
        assert (tmp_path / "vid" / "c1" / "pha" / path.name).read_bytes() == (
            tmp_path / "img" / path.name
        ).read_bytes()


FULL = [
    "--mask",
    "MASK",
    "--unknown-width",
    "6",
    "--temporal",
    "flow",
    "--save-trimap",
    "--save-rgba",
    "--save-video",
    "lossless",
    "alpha",
    "prores",
]


def full_run(clips: Path, out: Path, video: Path | None = None) -> int:
    argv = [a.replace("MASK", str(clips / "mask" / "c0.png")) for a in FULL]
    return run("--video", str(video or clips / "c0.mkv"), *argv, "--output-dir", str(out))


@pytest.fixture(scope="module")
def uninterrupted(clips, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("uninterrupted")
    assert full_run(clips, out) == 0
    return pngs(out)


def test_outputs_and_videos(uninterrupted, clips, tmp_path):
    names = [f"{i:05d}.png" for i in range(FRAMES)]
    for folder in ("pha", "trimap", "rgba"):
        assert (
            sorted(k.split("/")[-1] for k in uninterrupted if k.startswith(f"c0/{folder}/"))
            == names
        )
    for video in ("alpha.mkv", "alpha.mp4", "rgba.mov"):
        assert f"c0/{video}" in uninterrupted


def test_the_lossless_video_decodes_to_the_pngs(clips, tmp_path):
    for bits in ("8", "16"):
        out = tmp_path / bits
        code = run_guided(
            clips, clips / "c0.mkv", out, "--alpha-bits", bits, "--save-video", "lossless"
        )
        assert code == 0
        with av.open(str(out / "c0" / "alpha.mkv")) as container:
            decoded = [f.to_ndarray() for f in container.decode(video=0)]
        pngs_ = [read_map_levels(p) for p in list_frames(out / "c0" / "pha")]
        assert len(decoded) == len(pngs_) == FRAMES
        for frame, png in zip(decoded, pngs_):
            assert png.dtype == (np.uint16 if bits == "16" else np.uint8)
            assert frame.dtype == png.dtype and np.array_equal(frame, png)


def test_a_resumed_run_gives_the_same_bytes(clips, uninterrupted, tmp_path):
    out = tmp_path / "out"
    assert full_run(clips, out) == 0  # a first, complete run
    assert differing(pngs(out), uninterrupted) == []
    # Lose the second half of the frames and a video, cut one alpha PNG short: resume.
    for i in range(3, FRAMES):
        (out / "c0" / "pha" / f"{i:05d}.png").unlink()
    (out / "c0" / "alpha.mkv").unlink()
    png = out / "c0" / "pha" / "00002.png"
    png.write_bytes(png.read_bytes()[:40])
    assert full_run(clips, out) == 0
    assert differing(pngs(out), uninterrupted) == []
    # Nothing missing: the clip is skipped, nothing is rewritten.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert full_run(clips, out) == 0
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_killed_run_resumes_with_identical_outputs(clips, tmp_path):
    long_clip = tmp_path / "long.mkv"
    frames = [f.image for f in iter_clip(5, (144, 192), 24, ClipMotion())]
    write_test_video(long_clip, frames)
    mask = tmp_path / "mask.png"
    alpha0 = next(iter_clip(5, (144, 192), 1, ClipMotion())).alpha
    write_image(mask, np.where(alpha0 > 0.5, 255, 0).astype(np.uint8))
    argv = [
        sys.executable,
        str(REPO_ROOT / "inference.py"),
        *MODEL,
        "--device",
        "cpu",
        "--video",
        str(long_clip),
        "--mask",
        str(mask),
        "--unknown-width",
        "6",
        "--temporal",
        "flow",
        "--save-rgba",
        "--save-video",
        "lossless",
        "webm",
    ]
    reference = tmp_path / "reference"
    subprocess.run([*argv, "--output-dir", str(reference)], check=True, capture_output=True)
    killed = tmp_path / "killed"
    done = kill_when_written([*argv, "--output-dir", str(killed)], killed / "long" / "pha", 8)
    assert 0 < done < 24 and not (killed / "long" / "alpha.mkv").exists()
    subprocess.run([*argv, "--output-dir", str(killed)], check=True, capture_output=True)
    for path in killed.rglob(".*.tmp"):  # what the kill left half-written is not an output
        path.unlink()
    assert differing(pngs(killed), pngs(reference)) == []


def test_a_truncated_video_gives_the_frames_before_the_damage(clips, tmp_path, caplog):
    whole = tmp_path / "whole"
    assert run_guided(clips, clips / "c0.mkv", whole) == 0
    data = (clips / "c0.mkv").read_bytes()
    cut = tmp_path / "c0.mkv"
    cut.write_bytes(data[: len(data) * 6 // 10])
    out = tmp_path / "cut"
    code = run_guided(clips, cut, out)
    assert code == 1
    written = list_frames(out / "c0" / "pha")
    assert 0 < len(written) < FRAMES
    for path in written:
        assert path.read_bytes() == (whole / "c0" / "pha" / path.name).read_bytes()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(str(cut) in e and f"frame {len(written)}" in e for e in errors), errors


def test_rotation_metadata_is_applied(clips, tmp_path):
    frames = [read_rgb_levels(p) for p in list_frames(clips / "com" / "c0")]
    # Stored turned by a quarter (clockwise), with the metadata that turns it back.
    write_test_video(
        tmp_path / "c0.mkv", [np.ascontiguousarray(np.rot90(f, -1)) for f in frames], rotation=90
    )
    out = tmp_path / "out"
    assert run_guided(clips, tmp_path / "c0.mkv", out) == 0
    upright = tmp_path / "upright"
    assert run_guided(clips, clips / "c0.mkv", upright) == 0
    assert pngs(out / "c0" / "pha") == pngs(upright / "c0" / "pha")


def test_a_rotation_that_is_not_a_quarter_turn_is_refused(clips, tmp_path, caplog):
    frames = [read_rgb_levels(p) for p in list_frames(clips / "com" / "c0")][:2]
    write_test_video(tmp_path / "odd.mkv", frames, rotation=30)
    code = run_guided(clips, tmp_path / "odd.mkv", tmp_path / "out")
    assert code == 1
    assert any("multiples of 90" in r.getMessage() for r in caplog.records)


def test_variable_frame_rate_timestamps_are_kept_in_the_videos(clips, tmp_path):
    frames = [read_rgb_levels(p) for p in list_frames(clips / "com" / "c0")]
    pts = [0, 40, 80, 200, 240, 400]  # ms: a pause, then a jump
    write_test_video(tmp_path / "vfr.mkv", frames, pts=pts, time_base=Fraction(1, 1000))
    out = tmp_path / "out"
    code = run_guided(clips, tmp_path / "vfr.mkv", out, "--save-video", "lossless", "prores")
    assert code == 0
    for video in ("alpha.mkv", "rgba.mov"):
        with av.open(str(out / "vfr" / video)) as container:
            seconds = [float(f.pts * f.time_base) for f in container.decode(video=0)]
        assert seconds == pytest.approx([p / 1000 for p in pts]), video


@pytest.mark.parametrize(
    "argv",
    [
        ["--propagate", "sam2"],
        ["--temporal", "flow", "--image", "x.png", "--trimap", "t.png"],
        ["--save-video", "alpha"],
        ["--temporal-strength", "0.5"],
        ["--save-video", "composite", "--trimap-dir", "."],
        ["--trimap", "a.png", "b.png"],
    ],
)
def test_usage_errors_exit_with_2(argv, tmp_path, capsys):
    video = [] if "--image" in argv else ["--video", "clip.mp4"]
    with pytest.raises(SystemExit) as exit_info:
        inference.main([*MODEL, *video, *argv, "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2


def test_setup_errors_exit_with_2(clips, tmp_path):
    assert (
        run(
            "--video",
            str(clips / "com"),
            "--mask",
            str(clips / "mask" / "c0.png"),
            "--unknown-width",
            "6",
            "--output-dir",
            str(tmp_path),
        )
        == 2
    )
    assert (
        run(
            "--video",
            str(tmp_path / "missing.mp4"),
            "--trimap-dir",
            str(clips),
            "--output-dir",
            str(tmp_path),
        )
        == 2
    )


def test_frames_before_the_first_guidance_fail_and_keyframes_propagate(clips, tmp_path, caplog):
    keyframes = tmp_path / "keys"
    keyframes.mkdir()
    shutil.copy(clips / "trimap" / "c0" / "00002.png", keyframes / "key_2.png")  # by number
    code = run(
        "--video",
        str(clips / "c0.mkv"),
        "--trimap-dir",
        str(keyframes),
        "--save-trimap",
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert code == 1
    written = [p.stem for p in list_frames(tmp_path / "out" / "c0" / "pha")]
    assert written == [f"{i:05d}" for i in range(2, FRAMES)]
    assert any("frame 0 (00000): no guidance" in r.getMessage() for r in caplog.records)
    trimap = read_map_levels(tmp_path / "out" / "c0" / "trimap" / "00002.png")
    assert np.array_equal(trimap, read_map_levels(clips / "trimap" / "c0" / "00002.png"))


def test_the_flow_mode_lowers_dtssd_without_raising_sad(tmp_path):
    root = tmp_path / "slow"
    motion = ClipMotion(subject_speed=0.5, rotation=0.1, sway=0.5, background_speed=0.3)
    for seed in range(2):
        write_clip(root, f"s{seed}", seed, (96, 128), 8, motion)
    means = {}
    for mode in ("off", "flow"):
        out = tmp_path / mode
        assert (
            run(
                "--video",
                str(root / "com"),
                "--trimap-dir",
                str(root / "trimap"),
                "--temporal",
                mode,
                "--output-dir",
                str(out),
            )
            == 0
        )
        results, failures = evaluate_clips(
            match_clips(out, root / "pha", root / "trimap"), "unknown"
        )
        assert not failures
        means[mode] = {k: np.mean([r.metrics[k] for r in results]) for k in ("sad", "dtssd")}
    assert means["flow"]["dtssd"] < means["off"]["dtssd"]
    assert means["flow"]["sad"] <= 1.05 * means["off"]["sad"]


@pytest.mark.slow
def test_two_processes_share_the_clips(clips, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    base = [
        "--video",
        str(clips / "com"),
        "--trimap-dir",
        str(clips / "trimap"),
        "--temporal",
        "flow",
    ]
    assert run(*base, "--output-dir", str(one)) == 0
    report = tmp_path / "report.json"
    assert run(*base, "--output-dir", str(two), "--num-gpus", "2", "--report", str(report)) == 0
    assert pngs(one) == pngs(two)
    record = json.loads(report.read_text())
    assert record["done"] == 2 * FRAMES and len(record["ranks"]) == 2


def test_composites_over_a_background_video(clips, tmp_path):
    background = [np.full((36, 48, 3), 40 * i, np.uint8) for i in range(4)]  # restarts after 4
    write_test_video(tmp_path / "bg.mkv", background)
    out = tmp_path / "out"
    extra = (
        "--composite",
        str(tmp_path / "bg.mkv"),
        "--save-foreground",
        "--save-video",
        "composite",
    )
    code = run_guided(clips, clips / "c0.mkv", out, *extra)
    assert code == 0
    for index in range(FRAMES):
        name = f"{index:05d}.png"
        foreground = read_rgb_levels(out / "c0" / "fgr" / name).astype(np.float32) / 255
        alpha = read_map_levels(out / "c0" / "pha" / name)[..., None].astype(np.float32) / 255
        colour = np.float32(40 * (index % 4) / 255)
        expected = np.round((foreground * alpha + colour * (1 - alpha)) * 255)
        composite = read_rgb_levels(out / "c0" / "com" / name).astype(np.float32)
        assert np.abs(composite - expected).max() <= 1
    with av.open(str(out / "c0" / "composite.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == FRAMES


def test_an_mp4_cut_before_its_index_is_a_clear_error(clips, tmp_path, caplog):
    frames = [read_rgb_levels(p) for p in list_frames(clips / "com" / "c0")]
    write_test_video(tmp_path / "c0.mp4", frames, codec="libx264", pixel_format="yuv420p")
    data = (tmp_path / "c0.mp4").read_bytes()
    (tmp_path / "c0.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end
    code = run_guided(clips, tmp_path / "c0.mp4", tmp_path / "out")
    assert code == 1
    assert any(
        str(tmp_path / "c0.mp4") in r.getMessage() and "frame 0" in r.getMessage()
        for r in caplog.records
    )


def test_masks_of_clips_take_the_auto_width_by_default(clips, tmp_path):
    mask = clips / "mask" / "c0.png"
    out = tmp_path / "out"
    code = run(
        "--video",
        str(clips / "c0.mkv"),
        "--mask",
        str(mask),
        "--save-trimap",
        "--output-dir",
        str(out),
    )
    assert code == 0
    expected = trimap_from_mask(read_map_levels(mask), "auto")
    assert np.array_equal(read_map_levels(out / "c0" / "trimap" / "00000.png"), expected)
