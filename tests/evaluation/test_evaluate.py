"""evaluation/folders.py and its command line tools/evaluate.py: file matching, metrics per image
and mean, CSV and the CLI."""

import csv
import logging
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from evaluation.folders import (
    TABLE_HEADER,
    MissingFilesError,
    evaluate_items,
    format_table,
    match_files,
    mean_metrics,
)
from evaluation.metrics import compute_metrics
from tools.evaluate import run

REPO_ROOT = Path(__file__).resolve().parents[2]
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
    """Per-image metrics of the matched files and their mean, as the command line computes
    with ``--allow-missing``."""
    items = match_files(dirs["pred"], dirs["label"], dirs["trimap"], allow_missing=True)
    per_image, _ = evaluate_items(items, region)
    return per_image, mean_metrics(per_image)


def _run(dirs: dict, csv_path: Path | None = None, allow_missing: bool = False) -> int:
    return run(dirs["pred"], dirs["label"], dirs["trimap"], "unknown", 1, csv_path, allow_missing)


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
    items = match_files(dirs["pred"], dirs["label"], dirs["trimap"], allow_missing=True)
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


def test_missing_predictions_are_an_error_unless_allowed(folders, caplog, capsys):
    dirs = folders["dirs"]
    with pytest.raises(MissingFilesError, match="predictions missing.*: nopred"):
        match_files(dirs["pred"], dirs["label"], dirs["trimap"])
    assert _run(dirs) == 1
    assert "nopred" in caplog.text and "--allow-missing" in caplog.text
    assert "Mean" not in capsys.readouterr().out  # no mean over fewer images
    assert _run(dirs, allow_missing=True) == 0
    assert "Mean over 3 images" in capsys.readouterr().out
    (dirs["trimap"] / "a.png").unlink()  # a label without trimap
    with pytest.raises(MissingFilesError, match="labels without trimap.*: a"):
        match_files(dirs["pred"], dirs["label"], dirs["trimap"])


def _only(dirs: dict, name: str) -> None:
    """Keep only the files of ``name`` in the three folders."""
    for folder in dirs.values():
        for path in folder.iterdir():
            if path.stem != name:
                path.unlink()


def test_colour_labels_are_errors(folders, caplog):
    dirs = folders["dirs"]
    _only(dirs, "a")
    gt = cv2.imread(str(dirs["label"] / "a.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(dirs["label"] / "a.png"), np.dstack([gt, gt // 2, gt]))  # channels differ
    assert _run(dirs) == 1
    assert "a.png" in caplog.text and "colour image" in caplog.text


@pytest.mark.parametrize("swap", ["label is a trimap", "trimap is an alpha"])
def test_swapped_label_and_trimap_folders_are_errors(folders, caplog, swap):
    dirs = folders["dirs"]
    _only(dirs, "a")
    label, trimap = dirs["label"] / "a.png", dirs["trimap"] / "a.png"
    if swap == "label is a trimap":
        label.write_bytes(trimap.read_bytes())
        expected = (str(label), "a trimap, not an alpha matte")
    else:
        trimap.write_bytes(label.read_bytes())
        expected = (str(trimap), "not a trimap")
    assert _run(dirs) == 1
    assert all(text in caplog.text for text in expected)


def test_a_truncated_label_jpeg_is_an_error(folders, caplog):
    dirs = folders["dirs"]
    _only(dirs, "b")  # its label is a JPEG
    label = dirs["label"] / "b.jpg"
    label.write_bytes(label.read_bytes()[:-200])
    assert _run(dirs) == 1
    assert "b.jpg" in caplog.text and "truncated" in caplog.text


def test_an_unwritable_csv_path_is_reported_before_any_work(folders, tmp_path, caplog, capsys):
    dirs = folders["dirs"]
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    assert _run(dirs, csv_path=blocker / "out.csv", allow_missing=True) == 2
    assert "blocker" in caplog.text and "Mean" not in capsys.readouterr().out
    assert _run(dirs, csv_path=tmp_path, allow_missing=True) == 2  # a folder


def test_the_table_is_printed_before_the_csv_is_written(folders, tmp_path, capsys, monkeypatch):
    import tools.evaluate as evaluate_tool

    def fail_to_write(path, per_image):
        assert "Mean over" in capsys.readouterr().out  # already printed
        raise OSError("disk full")

    monkeypatch.setattr(evaluate_tool, "write_csv", fail_to_write)
    with pytest.raises(OSError, match="disk full"):
        _run(folders["dirs"], csv_path=tmp_path / "m.csv", allow_missing=True)


def test_units_in_the_header_agree_with_the_explanation():
    text = format_table({"sad": 1.0, "mse": 2.0, "grad": 3.0, "conn": 4.0}, 1, "unknown")
    assert "MSE(x1e3)" in TABLE_HEADER and "MSE = mean(d_alpha^2) x 1e3" in text
    for metric in ("SAD", "Grad", "Conn"):
        assert f"{metric}(/1e3)" in TABLE_HEADER and f"{metric} = sum" in text
    assert "x1e-3" not in text and "(x1e3)" not in text.replace("MSE(x1e3)", "")


@pytest.mark.slow
def test_cli(folders: dict, tmp_path: Path) -> None:
    dirs = folders["dirs"]
    (dirs["pred"] / "c.png").write_bytes(b"\x89PNG garbage")
    csv_path = tmp_path / "out" / "per_image.csv"
    command = [
        sys.executable, str(REPO_ROOT / "tools" / "evaluate.py"),
        "--pred-dir", str(dirs["pred"]), "--label-dir", str(dirs["label"]),
        "--trimap-dir", str(dirs["trimap"]), "--workers", "2", "--csv", str(csv_path),
        "--allow-missing",
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


def test_a_missing_folder_is_a_setup_error(folders, tmp_path, caplog):
    dirs = {**folders["dirs"], "pred": tmp_path / "nowhere"}
    assert _run(dirs) == 2
    assert "nowhere" in caplog.text


def test_labels_and_trimaps_in_every_readable_format_and_other_files_reported(tmp_path, caplog):
    """Labels and trimaps are read in the formats inference.py reads; a file that is not read
    is named with the reason."""
    dirs = {kind: tmp_path / kind for kind in ("pred", "label", "trimap")}
    for folder in dirs.values():
        folder.mkdir()
    suffixes = (".webp", ".tif", ".bmp", ".pgm")
    for index, suffix in enumerate(suffixes):
        pred, gt, trimap = _synthetic(index)
        name = suffix[1:]
        cv2.imwrite(str(dirs["pred"] / f"{name}.png"), pred)
        cv2.imwrite(str(dirs["label"] / f"{name}{suffix}"), gt, [cv2.IMWRITE_WEBP_QUALITY, 101])
        cv2.imwrite(
            str(dirs["trimap"] / f"{name}{suffix}"), trimap, [cv2.IMWRITE_WEBP_QUALITY, 101]
        )
    (dirs["label"] / "notes.txt").write_text("labels")
    with caplog.at_level(logging.WARNING):
        items = match_files(dirs["pred"], dirs["label"], dirs["trimap"])
    assert sorted(items) == sorted(s[1:] for s in suffixes)
    assert "notes.txt" in caplog.text and "not read" in caplog.text
    per_image, _ = evaluate_items(items, "unknown")
    for index, suffix in enumerate(suffixes):
        pred, gt, trimap = _synthetic(index)
        assert per_image[suffix[1:]] == pytest.approx(compute_metrics(pred, gt, trimap))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_jpeg_trimap_fails_with_the_fix_or_is_snapped_with_snap_trimap(folders, caplog, workers):
    """The policy of inference.py: refused with the fix, or each value to the nearest level."""
    dirs = folders["dirs"]
    _only(dirs, "a")
    png = dirs["trimap"] / "a.png"
    jpeg = png.with_suffix(".jpg")
    cv2.imwrite(
        str(jpeg), cv2.imread(str(png), cv2.IMREAD_GRAYSCALE), [cv2.IMWRITE_JPEG_QUALITY, 40]
    )
    png.unlink()
    decoded = cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE).astype(int)
    assert not np.isin(decoded, (0, 128, 255)).all()
    levels = np.array([128, 0, 255])  # argmin takes the first of equals: unknown on a tie
    snapped = levels[np.abs(decoded[..., None] - levels).argmin(-1)].astype(np.uint8)
    args = (dirs["pred"], dirs["label"], dirs["trimap"], "unknown", workers, None)

    assert run(*args) == 1
    assert str(jpeg) in caplog.text and "--snap-trimap" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        items = match_files(dirs["pred"], dirs["label"], dirs["trimap"])
        per_image, failures = evaluate_items(items, workers=workers, snap_trimap=True)
        assert run(*args, snap_trimap=True) == 0
    assert not failures
    pred, gt, _ = folders["arrays"]["a"]
    assert per_image["a"] == compute_metrics(pred, gt, snapped)
    assert f"{jpeg}: " in caplog.text and "snapped to the nearest" in caplog.text  # from a worker
