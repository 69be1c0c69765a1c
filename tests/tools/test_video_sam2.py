"""inference.py --video with a segmenter: prompts on the first frame (propagated by SAM 2 by
default, or by flow from the image segmenter's mask), a first-frame mask and keyframes as SAM 2's
prompts, every propagated trimap made from transformers' own streaming masks; resume gives the
same bytes; usage and setup errors exit with 2 (tiny random checkpoints, no network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import inference
from data.clips import list_frames
from data.image_io import read_map_levels, write_image
from data.synthetic_clips import MASK_THRESHOLD, ClipMotion, iter_clip
from data.trimap import trimap_from_mask
from predictor.prompts import Prompts
from predictor.segmenter import load_segmenter
from tests.helpers import (
    DEMO_CHECKPOINT,
    REPO_ROOT,
    TINY_CONFIG,
    kill_when_written,
    reference_sam2_video_masks,
    save_tiny_video_segmenter,
    write_test_video,
)

pytestmark = pytest.mark.usefixtures("hub_offline")

MODEL = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
SIZE = (48, 64)
FRAMES = 6
BOX = "8,6,50,44"
# The share of a frame's pixels whose trimap may differ from the reference's (0.1 %).
MAX_DIFFERENT = 0.001


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    """A synthetic clip as a lossless video file (decodes to the frames exactly), its frames,
    its first frame's true mask, and a tiny SAM 2 video checkpoint."""
    root = tmp_path_factory.mktemp("sam2_clip")
    frames = list(iter_clip(2, SIZE, FRAMES, ClipMotion(subject_speed=1.5, sway=1.0)))
    write_test_video(root / "clip.mkv", [frame.image for frame in frames])
    masks = root / "masks"
    masks.mkdir()
    for index in (0, 3):
        mask = np.where(frames[index].alpha > MASK_THRESHOLD, 255, 0).astype(np.uint8)
        write_image(masks / f"mask_{index}.png", mask)
    return {
        "video": root / "clip.mkv",
        "images": [frame.image for frame in frames],
        "masks": masks,
        "sam2": save_tiny_video_segmenter(root / "sam2_video"),
    }


def run(*argv: str) -> int:
    return inference.main([*MODEL, "--device", "cpu", *argv])


def trimaps(out: Path) -> list[np.ndarray]:
    return [read_map_levels(path) for path in list_frames(out / "clip" / "trimap")]


def _different(a: np.ndarray, b: np.ndarray) -> float:
    return float((a != b).mean())


def _prompted_argv(clip: dict) -> list[str]:
    argv = ["--video", str(clip["video"]), "--segmenter", str(clip["sam2"]), "--box", BOX]
    return [*argv, "--temporal", "flow", "--save-trimap", "--save-video", "lossless"]


@pytest.fixture(scope="module")
def prompted(clip, tmp_path_factory) -> Path:
    """The outputs of a run with a box on the first frame (SAM 2 propagation: the default)."""
    out = tmp_path_factory.mktemp("prompted")
    assert run(*_prompted_argv(clip), "--output-dir", str(out)) == 0
    return out


def test_prompts_on_the_first_frame_are_propagated_by_sam2(clip, prompted):
    box = Prompts(box=tuple(float(v) for v in BOX.split(",")))
    expected = reference_sam2_video_masks(clip["sam2"], clip["images"], prompts=box)
    written = trimaps(prompted)
    assert len(written) == FRAMES
    for index, (trimap, mask) in enumerate(zip(written, expected)):
        assert _different(trimap, trimap_from_mask(mask, "auto")) <= MAX_DIFFERENT, index


@pytest.mark.parametrize("guidance", ["--mask", "--mask-dir"])
def test_a_first_frame_mask_and_keyframes_are_sam2s_prompts(clip, guidance, tmp_path):
    paths = list_frames(clip["masks"])
    files = {i: read_map_levels(p) > MASK_THRESHOLD * 255 for i, p in zip((0, 3), paths)}
    if guidance == "--mask":
        files.pop(3)
    source = str(paths[0] if guidance == "--mask" else clip["masks"])
    out = tmp_path / "out"
    argv = ["--video", str(clip["video"]), guidance, source, "--segmenter", str(clip["sam2"])]
    assert run(*argv, "--save-trimap", "--output-dir", str(out)) == 0
    expected = reference_sam2_video_masks(clip["sam2"], clip["images"], masks=files)
    for index, trimap in enumerate(trimaps(out)):
        mask = files.get(index, expected[index])  # a keyframe keeps its own file's trimap
        assert _different(trimap, trimap_from_mask(mask, "auto")) <= MAX_DIFFERENT, index


def test_prompts_with_flow_take_the_image_segmenters_mask(clip, tiny_segmenters, tmp_path):
    out = tmp_path / "out"
    image_segmenter = tiny_segmenters["sam2"]
    argv = ["--video", str(clip["video"]), "--segmenter", str(image_segmenter), "--box", BOX]
    assert run(*argv, "--propagate", "flow", "--save-trimap", "--output-dir", str(out)) == 0
    box = Prompts(box=tuple(float(v) for v in BOX.split(",")))
    first = load_segmenter(image_segmenter, device="cpu").guidance(clip["images"][0], box)
    written = trimaps(out)
    assert len(written) == FRAMES and np.array_equal(written[0], first.trimap)


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


def test_a_resumed_sam2_run_gives_the_same_bytes(clip, prompted, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prompted, out)
    for index in range(3, FRAMES):  # lose the second half, as a killed run would
        (out / "clip" / "pha" / f"{index:05d}.png").unlink()
    (out / "clip" / "alpha.mkv").unlink()
    assert run(*_prompted_argv(clip), "--output-dir", str(out)) == 0
    assert _pngs(out) == _pngs(prompted)


@pytest.mark.slow
def test_a_killed_sam2_run_resumes_with_identical_outputs(clip, tmp_path):
    long_clip = tmp_path / "long.mkv"
    write_test_video(long_clip, [f.image for f in iter_clip(4, (72, 96), 30, ClipMotion())])
    argv = [sys.executable, str(REPO_ROOT / "inference.py"), *MODEL, "--device", "cpu"]
    argv += ["--video", str(long_clip), "--segmenter", str(clip["sam2"]), "--box", "10,8,80,64"]
    argv += ["--save-trimap", "--save-video", "lossless"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(
        [*argv, "--output-dir", str(reference)], check=True, capture_output=True, env=env
    )
    pha = killed / "long" / "pha"
    done = kill_when_written([*argv, "--output-dir", str(killed)], pha, 10, env)
    assert 0 < done < 30 and not (killed / "long" / "alpha.mkv").exists()
    subprocess.run([*argv, "--output-dir", str(killed)], check=True, capture_output=True, env=env)
    for path in killed.rglob(".*.tmp"):  # what the kill left half-written is not an output
        path.unlink()
    assert _pngs(killed) == _pngs(reference)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mask", "m.png", "--propagate", "sam2"], "--propagate sam2 needs --segmenter"),
        (["--box", "1,1,5,5"], "--box and --point need a --segmenter"),
        (["--segmenter", "S", "--box", "1,1,5,5", "--mask", "m.png"], "first frame's guidance"),
        (["--segmenter", "S", "--prompts", "p.json"], "--prompts maps images to prompts"),
        (["--segmenter", "S", "--mask", "m.png", "--propagate", "flow"], "give them, or"),
        (["--segmenter", "S"], "--video needs guidance"),
    ],
)
def test_usage_errors_exit_with_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        inference.main([*MODEL, "--video", "clip.mp4", *argv, "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_setup_errors_exit_with_2(clip, tiny_segmenters, tmp_path, caplog):
    video, sam2 = str(clip["video"]), str(clip["sam2"])
    out = ["--output-dir", str(tmp_path / "out")]
    assert run("--video", video, "--segmenter", sam2, "--box", "0,0,65,10", *out) == 2
    assert f"box 0,0,65,10 reaches outside the image: the first frame of {video}" in caplog.text
    assert run("--video", video, "--segmenter", sam2, "--point", "10,48", *out) == 2
    assert "point 10,48 is outside the image" in caplog.text
    two = ["--video", video, str(clip["masks"].parent / "sam2_video")]
    assert run(*two, "--segmenter", sam2, "--box", BOX, *out) == 2
    image_checkpoint = str(tiny_segmenters["sam2"])
    report = tmp_path / "report.json"
    argv = ["--video", video, "--segmenter", image_checkpoint, "--box", BOX, "--report"]
    assert run(*argv, str(report), *out) == 2
    error = json.loads(report.read_text())["error"]
    assert f"segmenter {image_checkpoint}: a SAM 2 image checkpoint" in error
    assert "memory modules" in error
