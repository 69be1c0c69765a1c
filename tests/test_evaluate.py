"""Tests for tools/evaluate.py: file matching, metrics per image and mean, CSV and the CLI."""

import csv
import logging
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from evaluation.metrics import compute_metrics
from tools.evaluate import evaluate_items, match_files, mean_metrics, run

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPE = (24, 32)


def _synthetic(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft disk gt, noisy pred, trimap with a 128 band."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    radius = np.hypot(yy - SHAPE[0] / 2, xx - SHAPE[1] / 2)
    gt = np.clip((9 - radius) * 60, 0, 255).astype(np.uint8)
    noise = rng.integers(-40, 40, SHAPE)
    pred = np.clip(gt.astype(int) + noise, 0, 255).astype(np.uint8)
    trimap = np.full(SHAPE, 128, dtype=np.uint8)
    trimap[radius > 10] = 0
    trimap[radius < 4] = 255
    return pred, gt, trimap


def _evaluate(dirs: dict, region: str = "unknown") -> tuple[dict, dict]:
    """Per-image metrics of the matched files and their mean, as the command line computes."""
    per_image, _ = evaluate_items(match_files(dirs["pred"], dirs["label"], dirs["trimap"]), region)
    return per_image, mean_metrics(per_image)


@pytest.fixture
def folders(tmp_path: Path) -> dict:
    """Three complete images (one label as JPEG), one missing prediction, one extra one."""
    dirs = {kind: tmp_path / kind for kind in ("pred", "label", "trimap")}
    for folder in dirs.values():
        folder.mkdir()
    arrays = {}
    for index, name in enumerate(("a", "b", "c", "nopred")):
        pred, gt, trimap = _synthetic(index)
        label_suffix = ".jpg" if name == "b" else ".png"
        cv2.imwrite(str(dirs["label"] / f"{name}{label_suffix}"), gt)
        cv2.imwrite(str(dirs["trimap"] / f"{name}.png"), trimap)
        if name != "nopred":
            cv2.imwrite(str(dirs["pred"] / f"{name}.png"), pred)
            gt_read = cv2.imread(str(dirs["label"] / f"{name}{label_suffix}"), cv2.IMREAD_UNCHANGED)
            arrays[name] = (pred, gt_read, trimap)
    cv2.imwrite(str(dirs["pred"] / "stray.png"), _synthetic(9)[0])
    return {"dirs": dirs, "arrays": arrays}


def test_metrics_of_matched_files_and_their_mean(folders: dict, caplog) -> None:
    dirs = folders["dirs"]
    with caplog.at_level(logging.WARNING):
        per_image, mean = _evaluate(dirs)
    assert sorted(per_image) == ["a", "b", "c"]
    for name, (pred, gt, trimap) in folders["arrays"].items():
        assert per_image[name] == compute_metrics(pred, gt, trimap)
    for metric, value in mean.items():
        assert value == pytest.approx(np.mean([m[metric] for m in per_image.values()]))
    assert "predictions missing" in caplog.text and ": nopred" in caplog.text
    assert "extra predictions" in caplog.text and ": stray" in caplog.text


def test_region_all(folders: dict) -> None:
    dirs = folders["dirs"]
    per_image, _ = _evaluate(dirs, region="all")
    pred, gt, trimap = folders["arrays"]["a"]
    assert per_image["a"] == compute_metrics(pred, gt, trimap, region="all")


def test_bad_items_are_reported_and_skipped(folders: dict, caplog) -> None:
    dirs = folders["dirs"]
    (dirs["pred"] / "a.png").write_bytes(b"definitely not a png")
    cv2.imwrite(str(dirs["pred"] / "c.png"), np.zeros((SHAPE[0] + 1, SHAPE[1]), np.uint8))
    items = match_files(dirs["pred"], dirs["label"], dirs["trimap"])
    with caplog.at_level(logging.ERROR):
        per_image, failures = evaluate_items(items)
    assert sorted(per_image) == ["b"]
    assert sorted(failures) == ["a", "c"]
    assert "cannot decode" in failures["a"] and str(dirs["pred"] / "a.png") in failures["a"]
    assert "size mismatch" in failures["c"] and str(dirs["pred"] / "c.png") in failures["c"]
    assert "a: skipped" in caplog.text


def test_nothing_to_evaluate(tmp_path: Path) -> None:
    for kind in ("pred", "label", "trimap"):
        (tmp_path / kind).mkdir()
    cv2.imwrite(str(tmp_path / "pred" / "x.png"), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        match_files(tmp_path / "pred", tmp_path / "label", tmp_path / "trimap")
    assert run(tmp_path / "pred", tmp_path / "label", tmp_path / "trimap", "unknown", 1, None) == 1


@pytest.mark.slow
def test_cli(folders: dict, tmp_path: Path) -> None:
    dirs = folders["dirs"]
    (dirs["pred"] / "c.png").write_bytes(b"\x89PNG garbage")
    csv_path = tmp_path / "out" / "per_image.csv"
    command = [
        sys.executable, str(REPO_ROOT / "tools" / "evaluate.py"),
        "--pred-dir", str(dirs["pred"]), "--label-dir", str(dirs["label"]),
        "--trimap-dir", str(dirs["trimap"]), "--workers", "2", "--csv", str(csv_path),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert completed.returncode == 1, completed.stderr
    assert "c: skipped" in completed.stderr
    assert "Mean over 2 images" in completed.stdout
    with open(csv_path, newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == ["a", "b"]
    for name in rows:
        expected = compute_metrics(*folders["arrays"][name])
        for metric, value in expected.items():
            assert math.isclose(float(rows[name][metric]), value, rel_tol=1e-8, abs_tol=1e-12)
