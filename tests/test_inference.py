"""inference.py end to end, the evaluator, and tools/evaluate.py on the predictions."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, randomize_

import inference
from engine.checkpoint import Checkpointer
from engine.config import LazyConfig, instantiate
from engine.predictor import alpha_to_uint8, build_inference_model, load_inference_weights
from evaluation.evaluator import MattingEvaluator
from evaluation.metrics import compute_metrics
from tools.evaluate import evaluate_items, match_files, mean_metrics
from tools.make_synthetic_dataset import make_synthetic_dataset

TINY_CONFIG = REPO_ROOT / "configs" / "tiny" / "MEMatte_tiny_synthetic.py"
NUM_TEST = 3
SIZE = 96


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A synthetic Composition-1k test set, the same in the generic layout plus an odd-sized
    image, and a tiny checkpoint written by the trainer's checkpointer (teacher included)."""
    root = tmp_path_factory.mktemp("inference")
    make_synthetic_dataset(root / "synthetic", 0, num_fg=2, num_bg=2, num_test=NUM_TEST, size=SIZE)
    comp1k = root / "synthetic" / "test"
    generic = root / "generic"
    for src, dst in (("merged", "images"), ("trimaps", "trimaps"), ("alpha_copy", "alphas")):
        shutil.copytree(comp1k / src, generic / dst)
    first = sorted((generic / "images").iterdir())[0]
    for folder in ("images", "trimaps", "alphas"):
        path = next((generic / folder).glob(first.stem + ".*"))
        flag = cv2.IMREAD_COLOR if folder == "images" else cv2.IMREAD_GRAYSCALE
        odd = cv2.imread(str(path), flag)[: SIZE - 20, : SIZE - 8]  # another size, same content
        cv2.imwrite(str(generic / folder / f"odd{path.suffix}"), odd)

    torch.manual_seed(0)
    model = randomize_(instantiate(LazyConfig.load(str(TINY_CONFIG)).model))
    Checkpointer(model, str(root / "train")).save("model_final", iteration=10)
    return {"comp1k": comp1k, "generic": generic, "ckpt": root / "train" / "model_final.pth"}


def _run(data_dir: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return inference.main(
        [
            "--config-file",
            str(TINY_CONFIG),
            "--checkpoint",
            str(ckpt),
            "--data-dir",
            str(data_dir),
            "--output-dir",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "0",
            *extra,
        ]
    )


def _read(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))}


def test_composition1k_outputs_follow_the_official_conversion(workspace, tmp_path):
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, workspace["ckpt"], "--save-routing") == 0
    preds = _read(out)
    assert len(preds) == NUM_TEST
    model = build_inference_model(TINY_CONFIG)
    load_inference_weights(model, workspace["ckpt"])
    model.eval()
    for stem, pred in preds.items():
        assert pred.dtype == np.uint8 and pred.ndim == 2
        image = cv2.imread(str(next((workspace["comp1k"] / "merged").glob(stem + ".*"))))
        trimap = cv2.imread(str(workspace["comp1k"] / "trimaps" / f"{stem}.png"), 0)
        assert pred.shape == trimap.shape
        assert (pred[trimap == 0] == 0).all() and (pred[trimap == 255] == 255).all()
        batch = {
            "image": torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1)[None] / 255.0,
            "trimap": torch.from_numpy(trimap)[None, None] / 255.0,
        }
        with torch.inference_mode():
            phas = model(batch)["phas"][0, 0]
        assert np.array_equal(pred, alpha_to_uint8(phas, batch["trimap"][0, 0]))
        assert (out / "routing" / f"{stem}.jpg").is_file()


def test_batch_of_two_equals_batch_of_one_with_mixed_sizes(workspace, tmp_path):
    assert _run(workspace["generic"], tmp_path / "b1", workspace["ckpt"]) == 0
    assert _run(workspace["generic"], tmp_path / "b2", workspace["ckpt"], "--batch-size", "2") == 0
    one, two = _read(tmp_path / "b1"), _read(tmp_path / "b2")
    assert sorted(one) == sorted(two) and len(one) == NUM_TEST + 1
    for stem in one:
        assert np.abs(one[stem].astype(int) - two[stem].astype(int)).max() <= 1, stem


def test_existing_outputs_are_skipped_unless_overwrite(workspace, tmp_path, caplog):
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, workspace["ckpt"]) == 0
    victim = sorted(out.glob("*.png"))[0]
    victim.unlink()
    caplog.set_level(logging.INFO)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    caplog.clear()
    assert _run(workspace["comp1k"], out, workspace["ckpt"]) == 0
    assert victim.is_file()
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in out.glob("*.png") if p != victim)
    assert f"skipped (already present) {NUM_TEST - 1}" in caplog.text
    assert _run(workspace["comp1k"], out, workspace["ckpt"], "--overwrite") == 0
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in out.glob("*.png") if p != victim)


def test_bad_items_are_reported_and_skipped(workspace, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(workspace["generic"], data)
    images = sorted((data / "images").iterdir())
    images[0].write_bytes(b"this is not an image")  # corrupt image
    (data / "trimaps" / f"{images[1].stem}.png").unlink()  # missing trimap
    trimap16 = (np.ones((SIZE, SIZE)) * 128 * 257).astype(np.uint16)
    cv2.imwrite(str(data / "trimaps" / f"{images[2].stem}.png"), trimap16)  # 16-bit trimap
    out = tmp_path / "pred"
    caplog.set_level(logging.INFO)
    assert _run(data, out, workspace["ckpt"]) == 1
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(p.stem for p in images[3:])
    for path in images[:3]:
        assert path.stem in caplog.text
    assert "failed 3" in caplog.text


def test_missing_checkpoint_is_a_clear_error(workspace, tmp_path, caplog):
    assert _run(workspace["comp1k"], tmp_path / "p", tmp_path / "none.pth") == 2
    assert "none.pth" in caplog.text


def test_evaluate_tool_and_evaluator_agree_with_compute_metrics(workspace, tmp_path):
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, workspace["ckpt"]) == 0
    labels, trimaps = workspace["comp1k"] / "alpha_copy", workspace["comp1k"] / "trimaps"
    per_image, _ = evaluate_items(match_files(out, labels, trimaps))
    mean = mean_metrics(per_image)
    assert len(per_image) == NUM_TEST
    for stem, metrics in per_image.items():
        pred = cv2.imread(str(out / f"{stem}.png"), 0)
        gt = cv2.imread(str(next(labels.glob(stem + ".*"))), 0)
        trimap = cv2.imread(str(trimaps / f"{stem}.png"), 0)
        assert metrics == pytest.approx(compute_metrics(pred, gt, trimap))

    model = build_inference_model(TINY_CONFIG)
    load_inference_weights(model, workspace["ckpt"])
    results = MattingEvaluator(workspace["comp1k"])(model.train())
    assert model.training  # mode restored
    for name, value in mean.items():
        assert results[f"eval/{name}"] == pytest.approx(value, rel=1e-6)
