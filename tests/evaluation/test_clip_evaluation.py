"""dtSSD and the evaluation of clip folders (tools/evaluate.py), against independent
computations of the definitions."""

from __future__ import annotations

import csv
import runpy
import sys

import cv2
import numpy as np
import pytest

from evaluation.dtssd import dtssd
from evaluation.metrics import compute_metrics
from tests.helpers import REPO_ROOT

EVALUATE = REPO_ROOT / "tools" / "evaluate.py"


def reference_dtssd(pred: list[np.ndarray], gt: list[np.ndarray]) -> list[float]:
    """Per-frame dtSSD as the VideoMatte240K evaluation computes it (float32, /255): 0 for the
    first frame, then sqrt(sum(((p_t - p_t-1) - (g_t - g_t-1))^2) / size) * 1e2."""
    values = [0.0]
    for t in range(1, len(pred)):
        p, pp = pred[t].astype(np.float32) / 255, pred[t - 1].astype(np.float32) / 255
        g, gp = gt[t].astype(np.float32) / 255, gt[t - 1].astype(np.float32) / 255
        values.append(float(np.sqrt(np.sum(((p - pp) - (g - gp)) ** 2) / g.size) * 1e2))
    return values


def test_dtssd_matches_the_definition_and_is_zero_for_identical_motion():
    rng = np.random.default_rng(0)
    a, b, c, d = (rng.integers(0, 256, (20, 30)).astype(np.uint8) for _ in range(4))
    expected = reference_dtssd([a, b], [c, d])[1]
    assert dtssd(b / 255, a / 255, d / 255, c / 255) == pytest.approx(expected, rel=1e-5)
    # A prediction that moves as the truth does has no temporal error, whatever its offset.
    assert dtssd(d / 255 + 0.1, c / 255 + 0.1, d / 255, c / 255) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="shapes"):
        dtssd(a, b, c, d[:5])


def _clips(rng, clips=2, frames=4, shape=(24, 32)) -> dict[str, tuple[list, list]]:
    result = {}
    for i in range(clips):
        gt = [rng.integers(0, 256, shape).astype(np.uint8) for _ in range(frames)]
        noise = [rng.integers(-20, 21, shape) for _ in range(frames)]
        pred = [np.clip(g.astype(int) + n, 0, 255).astype(np.uint8) for g, n in zip(gt, noise)]
        result[f"clip{i}"] = (pred, gt)
    return result


def _write(path, image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def _evaluate(capsys, *argv: str) -> tuple[int, str]:
    old = sys.argv
    sys.argv = [str(EVALUATE), *argv, "--workers", "1"]
    try:
        runpy.run_path(str(EVALUATE), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0), capsys.readouterr().out
    finally:
        sys.argv = old
    raise AssertionError("tools/evaluate.py did not exit")


@pytest.fixture
def clip_folders(tmp_path):
    """Predictions in inference.py's layout (OUT/<clip>/pha/), labels in the VideoMatte240K
    release layout (L/pha/<clip>/) and, for the second clip... all as 8-bit PNGs."""
    data = _clips(np.random.default_rng(1))
    for name, (pred, gt) in data.items():
        for t, (p, g) in enumerate(zip(pred, gt)):
            _write(tmp_path / "out" / name / "pha" / f"{t:04d}.png", p)
            _write(tmp_path / "labels" / "pha" / name / f"{t:04d}.png", g)
            # VideoMatting108's FG_done: RGBA frames whose alpha channel is the label.
            rgba = np.dstack([np.full(g.shape + (3,), 90, np.uint8), g])
            _write(tmp_path / "fg_done" / name / f"{t:04d}.png", rgba)
    return tmp_path, data


def _expected(data) -> dict[str, dict[str, float]]:
    expected = {}
    for name, (pred, gt) in data.items():
        per_frame = [compute_metrics(p, g, None, region="all") for p, g in zip(pred, gt)]
        means = {k: np.mean([m[k] for m in per_frame]) for k in per_frame[0]}
        means["dtssd"] = np.mean(reference_dtssd(pred, gt))
        expected[name] = means
    return expected


@pytest.mark.parametrize("labels", ["labels", "fg_done"])
def test_clip_folders_give_per_clip_and_overall_means(clip_folders, capsys, labels):
    root, data = clip_folders
    csv_path = root / "frames.csv"
    code, out = _evaluate(
        capsys,
        "--pred-dir",
        str(root / "out"),
        "--label-dir",
        str(root / labels),
        "--csv",
        str(csv_path),
    )
    assert code == 0
    expected = _expected(data)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("clip")}
    keys = ("sad", "mse", "grad", "conn", "dtssd")
    for name, means in expected.items():
        printed = [float(v) for v in rows[name][2:]]
        assert printed == pytest.approx([means[k] for k in keys], abs=1e-4)
    overall = next(line for line in out.splitlines() if line.startswith("mean of 2 clips"))
    printed = [float(v) for v in overall.split()[5:]]
    assert printed == pytest.approx(
        [np.mean([e[k] for e in expected.values()]) for k in keys], abs=1e-4
    )
    with open(csv_path) as file:
        frames = list(csv.DictReader(file))
    assert len(frames) == 8 and frames[0]["dtssd"] == "0"
    clip0 = [float(r["dtssd"]) for r in frames if r["clip"] == "clip0"]
    assert clip0 == pytest.approx(reference_dtssd(*data["clip0"]), rel=1e-5, abs=1e-9)


def test_a_missing_frame_fails_unless_allowed(clip_folders, capsys):
    root, _ = clip_folders
    (root / "out" / "clip1" / "pha" / "0002.png").unlink()
    args = ("--pred-dir", str(root / "out"), "--label-dir", str(root / "labels"))
    code, _ = _evaluate(capsys, *args)
    assert code == 1
    code, out = _evaluate(capsys, *args, "--allow-missing")
    assert code == 0 and "clip1" in out


def test_a_damaged_frame_fails_its_clip_and_the_run(clip_folders, capsys):
    root, _ = clip_folders
    (root / "out" / "clip1" / "pha" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    code, out = _evaluate(
        capsys, "--pred-dir", str(root / "out"), "--label-dir", str(root / "labels")
    )
    assert code == 1
    assert "clip0" in out and "mean of 1 clips" in out


def test_usage_errors_exit_with_2(clip_folders, capsys):
    root, _ = clip_folders
    code, _ = _evaluate(
        capsys, "--pred-dir", str(root / "out"), "--label-dir", str(root / "nowhere")
    )
    assert code == 2
    code, _ = _evaluate(
        capsys,
        "--pred-dir",
        str(root / "out"),
        "--label-dir",
        str(root / "labels"),
        "--region",
        "unknown",
    )
    assert code == 2


def test_trimaps_restrict_the_frame_metrics_to_the_unknown_band(clip_folders, capsys):
    root, data = clip_folders
    trimap = np.zeros((24, 32), np.uint8)
    trimap[6:18, 8:24] = 128
    for name in data:
        for t in range(4):
            _write(root / "trimaps" / name / f"{t:04d}.png", trimap)
    code, out = _evaluate(
        capsys,
        "--pred-dir", str(root / "out"),
        "--label-dir", str(root / "labels"),
        "--trimap-dir", str(root / "trimaps"),
    )  # fmt: skip
    assert code == 0
    pred, gt = data["clip0"]
    sad = np.mean([compute_metrics(p, g, trimap)["sad"] for p, g in zip(pred, gt)])
    row = next(line.split() for line in out.splitlines() if line.startswith("clip0"))
    assert float(row[2]) == pytest.approx(sad, abs=1e-4)


def test_trimap_frames_with_other_values_fail_unless_snapped(clip_folders, capsys):
    """The trimap policy of the image evaluator: other values than 0/128/255 (a JPEG trimap)
    fail the clip with the fix, or are moved to the nearest level with --snap-trimap."""
    root, data = clip_folders
    trimap = np.zeros((24, 32), np.uint8)
    trimap[6:18, 8:24] = 128
    noisy = trimap.copy()
    noisy[6, 8:24] = 131  # levels near 128, as a JPEG leaves them
    for name in data:
        for t in range(4):
            _write(root / "trimaps" / name / f"{t:04d}.png", noisy)
    argv = ["--pred-dir", str(root / "out"), "--label-dir", str(root / "labels")]
    argv += ["--trimap-dir", str(root / "trimaps")]
    code, _ = _evaluate(capsys, *argv)
    assert code == 1
    code, out = _evaluate(capsys, *argv, "--snap-trimap")
    assert code == 0
    pred, gt = data["clip0"]
    sad = np.mean([compute_metrics(p, g, trimap)["sad"] for p, g in zip(pred, gt)])
    row = next(line.split() for line in out.splitlines() if line.startswith("clip0"))
    assert float(row[2]) == pytest.approx(sad, abs=1e-4)
