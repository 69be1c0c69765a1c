"""inference.py on your own images: single images == folder mode, masks == their trimaps,
foreground / RGBA / composite outputs, and the --report file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT

import inference
from data.trimap import trimap_from_mask
from engine.predictor import MattingPredictor

TINY_CONFIG = REPO_ROOT / "configs" / "tiny" / "MEMatte_tiny_synthetic.py"
DEMO_CHECKPOINT = REPO_ROOT / "pretrained" / "demo" / "MEMatte_tiny_synthetic.pth"
DEMO = REPO_ROOT / "demo"
NAMES = ("test_000", "test_001", "test_002", "test_003")
WIDTH = "7"


def run(*extra: str, workers: str = "0") -> int:
    """``inference.py`` on the demo model, on the CPU."""
    command = ["--config-file", str(TINY_CONFIG), "--checkpoint", str(DEMO_CHECKPOINT)]
    return inference.main([*command, "--device", "cpu", "--workers", workers, *extra])


def read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def images(*names: str) -> list[str]:
    return [str(DEMO / "merged" / f"{name}.png") for name in names]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    """Folder mode on the demo test set (with prefetching loader processes)."""
    out = tmp_path_factory.mktemp("folder") / "out"
    assert run("--data-dir", str(DEMO), "--output-dir", str(out), workers="2") == 0
    return out


def test_single_images_give_the_folder_modes_pngs(folder_run, tmp_path):
    trimaps = [str(DEMO / "trimaps" / f"{name}.png") for name in NAMES]
    out = tmp_path / "single"
    assert run("--image", *images(*NAMES), "--trimap", *trimaps, "--output-dir", str(out)) == 0
    for name in NAMES:
        assert np.array_equal(read(out / f"{name}.png"), read(folder_run / f"{name}.png")), name


def test_a_mask_gives_the_pngs_of_the_trimap_made_from_it(tmp_path):
    masks = [str(DEMO / "alpha_copy" / f"{name}.png") for name in NAMES[:2]]
    out = tmp_path / "mask"
    command = ["--image", *images(*NAMES[:2]), "--mask", *masks, "--unknown-width", WIDTH]
    assert run(*command, "--save-trimap", "--output-dir", str(out)) == 0
    trimap_dir = tmp_path / "made_trimaps"
    trimap_dir.mkdir()
    for name, mask in zip(NAMES, masks):
        made = trimap_from_mask(read(Path(mask)), int(WIDTH))
        assert np.array_equal(read(out / "trimap" / f"{name}.png"), made)
        cv2.imwrite(str(trimap_dir / f"{name}.png"), made)
    expected = tmp_path / "trimap"
    trimaps = [str(trimap_dir / f"{name}.png") for name in NAMES[:2]]
    assert (
        run("--image", *images(*NAMES[:2]), "--trimap", *trimaps, "--output-dir", str(expected))
        == 0
    )
    for name in NAMES[:2]:
        assert np.array_equal(read(out / f"{name}.png"), read(expected / f"{name}.png")), name


def test_cutout_outputs_agree_with_the_alpha_and_foreground_pngs(folder_run, tmp_path):
    out = tmp_path / "cutout"
    command = ["--data-dir", str(DEMO), "--output-dir", str(out), "--save-foreground"]
    assert run(*command, "--save-rgba", "--composite", "#00ff00") == 0
    predictor = MattingPredictor.from_config(TINY_CONFIG, DEMO_CHECKPOINT, device="cpu")
    for name in NAMES:
        alpha = read(out / f"{name}.png")
        assert np.array_equal(alpha, read(folder_run / f"{name}.png"))  # unchanged by the extras
        foreground, rgba = (
            read(out / "foreground" / f"{name}.png"),
            read(out / "rgba" / f"{name}.png"),
        )
        assert rgba.shape[2] == 4 and np.array_equal(rgba[:, :, 3], alpha)
        assert np.array_equal(rgba[:, :, :3], foreground)
        image = read(DEMO / "merged" / f"{name}.png")
        opaque = alpha == 255
        assert np.array_equal(foreground[opaque], image[opaque])  # F = I where alpha is 1
        expected_alpha = predictor(
            DEMO / "merged" / f"{name}.png", DEMO / "trimaps" / f"{name}.png"
        )
        assert np.array_equal(np.floor(expected_alpha * np.float32(255)).astype(np.uint8), alpha)
        composite = read(out / "composite" / f"{name}.png").astype(np.float64)  # BGR
        weight = alpha[:, :, None] / 255.0
        green = np.array([0, 255, 0], np.float64)
        expected = foreground * weight + green * (1 - weight)
        assert np.abs(composite - expected).max() <= 1.0  # 8-bit foreground vs float


def test_composite_over_an_image(tmp_path):
    background = tmp_path / "bg.png"
    cv2.imwrite(str(background), np.full((20, 30, 3), (10, 20, 200), np.uint8))
    out = tmp_path / "over"
    trimap = str(DEMO / "trimaps" / "test_001.png")
    command = ["--image", *images("test_001"), "--trimap", trimap, "--output-dir", str(out)]
    assert run(*command, "--composite", str(background)) == 0
    alpha = read(out / "test_001.png")
    composite = read(out / "composite" / "test_001.png")
    assert composite.shape[:2] == alpha.shape
    assert np.array_equal(composite[alpha == 0][0], [10, 20, 200])  # the background shows


def test_report_lists_what_was_done_skipped_and_failed(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DEMO, data)
    (data / "trimaps" / "test_003.png").unlink()
    out, report = tmp_path / "out", tmp_path / "reports" / "run.json"
    command = ["--data-dir", str(data), "--output-dir", str(out), "--report", str(report)]
    assert run(*command) == 1
    record = json.loads(report.read_text())
    assert record["done"] == 3 and record["done_items"] == list(NAMES[:3])
    assert record["skipped"] == 0 and record["exit_code"] == 1
    assert record["failed"] == [
        {"path": str(data / "merged" / "test_003.png"), "reason": "no trimap"}
    ]
    assert record["seconds_per_image"] > 0 and record["peak_memory_bytes"] > 0
    assert set(record["routed_share"]) == {"1", "3"}  # the routed blocks of the tiny config
    assert "ranks" not in record  # one process
    assert run(*command) == 1  # the missing trimap still fails; the rest is skipped
    record = json.loads(report.read_text())
    assert record["done"] == 0 and record["skipped"] == 3


def test_usage_errors_exit_with_2(tmp_path, capsys):
    base = ["--output-dir", str(tmp_path / "out")]
    for command in (
        ["--image", *images("test_000")],  # no trimap or mask
        ["--image", *images("test_000", "test_001"), "--trimap", images("test_000")[0]],
        ["--image", *images("test_000"), "--mask", images("test_000")[0]],  # no width
        ["--data-dir", str(DEMO), "--save-trimap"],
        ["--data-dir", str(DEMO), "--composite", "not-a-colour"],
        ["--data-dir", str(DEMO), "--max-number-token", "lots"],
    ):
        try:
            code = run(*base, *command)
        except SystemExit as exc:  # argparse
            code = exc.code
        assert code == 2, command
    assert not (tmp_path / "out").exists()


def test_same_names_are_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(DEMO / "merged" / "test_000.png", other / "test_000.png")
    trimap = str(DEMO / "trimaps" / "test_000.png")
    command = ["--image", *images("test_000"), str(other / "test_000.png")]
    assert run(*command, "--trimap", trimap, trimap, "--output-dir", str(tmp_path / "o")) == 2
