"""inference.py end to end against an independent computation, the evaluator, and
tools/evaluate.py on the predictions."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, randomize_
from torch import nn
from untrusted import save_untrusted_checkpoint

import inference
from engine.checkpoint import Checkpointer
from engine.config import LazyConfig, instantiate
from engine.predictor import build_inference_model, load_inference_weights
from evaluation.evaluator import MattingEvaluator
from evaluation.metrics import compute_metrics
from tools.evaluate import evaluate_items, match_files, mean_metrics
from tools.make_synthetic_dataset import make_synthetic_dataset
from utils import token_budget

TINY_CONFIG = REPO_ROOT / "configs" / "tiny" / "MEMatte_tiny_synthetic.py"
NUM_TEST = 3
SIZE = 96
# Larger than the 512 px decoder tile, so that the patch decoder cuts it into several tiles.
LARGE_HW = (540, 600)
ALPHA_LEVELS = 255


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A synthetic Composition-1k test set, the same in the generic layout plus an odd-sized
    image, one large image, and a tiny checkpoint written by the trainer's checkpointer (teacher
    included)."""
    root = tmp_path_factory.mktemp("inference")
    make_synthetic_dataset(root / "synthetic", 0, num_fg=2, num_bg=2, num_test=NUM_TEST, size=SIZE)
    comp1k = root / "synthetic" / "test"
    generic, large = root / "generic", root / "large"
    for src, dst in (("merged", "images"), ("trimaps", "trimaps"), ("alpha_copy", "alphas")):
        shutil.copytree(comp1k / src, generic / dst)
        (large / dst).mkdir(parents=True)
    first = sorted((generic / "images").iterdir())[0]
    for folder in ("images", "trimaps", "alphas"):
        path = next((generic / folder).glob(first.stem + ".*"))
        flag = cv2.IMREAD_COLOR if folder == "images" else cv2.IMREAD_GRAYSCALE
        content = cv2.imread(str(path), flag)
        odd = content[: SIZE - 20, : SIZE - 8]  # another size, same content
        cv2.imwrite(str(generic / folder / f"odd{path.suffix}"), odd)
        interpolation = cv2.INTER_LINEAR if folder == "images" else cv2.INTER_NEAREST
        big = cv2.resize(content, LARGE_HW[::-1], interpolation=interpolation)
        cv2.imwrite(str(large / folder / f"big{path.suffix}"), big)

    torch.manual_seed(0)
    model = randomize_(instantiate(LazyConfig.load(str(TINY_CONFIG)).model))
    Checkpointer(model, str(root / "train")).save("model_final", iteration=10)
    return {
        "comp1k": comp1k,
        "generic": generic,
        "large": large,
        "ckpt": root / "train" / "model_final.pth",
    }


@pytest.fixture(scope="module")
def reference_model(workspace) -> nn.Module:
    """The tiny model loaded with plain torch calls, not through the predictor's helpers."""
    cfg = LazyConfig.load(str(TINY_CONFIG))
    cfg.model.teacher_backbone = None
    model = instantiate(cfg.model)
    weights = torch.load(workspace["ckpt"], map_location="cpu", weights_only=True)["model"]
    student = {k: v for k, v in weights.items() if not k.startswith("teacher_backbone.")}
    model.load_state_dict(student)
    return model.eval()


def expected_png(
    model: nn.Module,
    image_path: Path,
    trimap_path: Path,
    *,
    patch_decoder: bool = True,
    bf16: bool = False,
    max_number_token: int | None = 18500,
) -> np.ndarray:
    """The alpha PNG the official script writes, computed here from the model's forward:
    image RGB / 255 and trimap / 255 in, floor(alpha * 255) out, 0 and 255 forced where the
    trimap is 0 and 255."""
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)[..., ::-1]  # BGR -> RGB
    trimap = cv2.imread(str(trimap_path), cv2.IMREAD_GRAYSCALE)
    batch = {
        "image": torch.from_numpy(image.copy()).permute(2, 0, 1)[None] / 255.0,
        "trimap": torch.from_numpy(trimap)[None, None] / 255.0,
    }
    model.backbone.max_number_token = max_number_token
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), precision:
        alpha = model(batch, patch_decoder=patch_decoder)["phas"][0, 0].float().numpy()
    png = np.floor(alpha.clip(0, 1) * np.float32(ALPHA_LEVELS)).astype(np.uint8)
    png[trimap == 0] = 0
    png[trimap == ALPHA_LEVELS] = ALPHA_LEVELS
    return png


def expected_pngs(model: nn.Module, data_dir: Path, **forward) -> dict[str, np.ndarray]:
    """:func:`expected_png` of every image of a test folder (either layout), by stem."""
    image_dir = data_dir / ("merged" if (data_dir / "merged").is_dir() else "images")
    return {
        image.stem: expected_png(
            model, image, data_dir / "trimaps" / f"{image.stem}.png", **forward
        )
        for image in sorted(image_dir.iterdir())
    }


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


def _assert_same_pngs(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for stem, png in expected.items():
        assert actual[stem].dtype == np.uint8 and actual[stem].shape == png.shape, stem
        assert np.array_equal(actual[stem], png), stem


def _differ(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(a[stem], b[stem]) for stem in a)


def test_composition1k_outputs_follow_the_official_conversion(workspace, reference_model, tmp_path):
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, workspace["ckpt"], "--save-routing") == 0
    _assert_same_pngs(_read(out), expected_pngs(reference_model, workspace["comp1k"]))
    for stem in _read(out):
        assert (out / "routing" / f"{stem}.jpg").is_file()


def test_no_patch_decoder_decodes_the_whole_image(workspace, reference_model, tmp_path):
    whole = expected_pngs(reference_model, workspace["large"], patch_decoder=False)
    tiled = expected_pngs(reference_model, workspace["large"])
    assert _differ(whole, tiled)  # the two decoders differ on this image: the flag is visible
    out = tmp_path / "pred"
    assert _run(workspace["large"], out, workspace["ckpt"], "--no-patch-decoder") == 0
    _assert_same_pngs(_read(out), whole)


def test_bf16_precision_runs_the_forward_under_bf16_autocast(workspace, reference_model, tmp_path):
    bf16 = expected_pngs(reference_model, workspace["comp1k"], bf16=True)
    assert _differ(bf16, expected_pngs(reference_model, workspace["comp1k"]))
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, workspace["ckpt"], "--precision", "bf16") == 0
    _assert_same_pngs(_read(out), bf16)


@pytest.mark.parametrize("enough_memory", [False, True])
def test_auto_token_cap_follows_the_free_memory(
    workspace, reference_model, tmp_path, monkeypatch, caplog, enough_memory
):
    uncapped = expected_pngs(reference_model, workspace["comp1k"], max_number_token=None)
    no_global = expected_pngs(reference_model, workspace["comp1k"], max_number_token=0)
    assert _differ(uncapped, no_global)  # this model routes tokens to global attention
    free_bytes = 2**40 if enough_memory else 1  # 1 TiB: every token fits; 1 byte: none does
    monkeypatch.setattr(token_budget, "free_memory_bytes", lambda device: free_bytes)
    out = tmp_path / "pred"
    with caplog.at_level(logging.WARNING, logger="utils.token_budget"):
        assert _run(workspace["comp1k"], out, workspace["ckpt"], "--max-number-token", "auto") == 0
    _assert_same_pngs(_read(out), uncapped if enough_memory else no_global)
    assert ("not enough" in caplog.text) == (not enough_memory)


def test_a_ddp_prefixed_checkpoint_gives_the_same_alphas(workspace, reference_model, tmp_path):
    weights = torch.load(workspace["ckpt"], weights_only=True)["model"]
    ddp = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in weights.items()}}, ddp)
    out = tmp_path / "pred"
    assert _run(workspace["comp1k"], out, ddp) == 0
    _assert_same_pngs(_read(out), expected_pngs(reference_model, workspace["comp1k"]))


def test_pickled_objects_are_loaded_only_with_trust_checkpoint(
    workspace, reference_model, tmp_path, caplog
):
    crafted, marker = tmp_path / "crafted.pth", tmp_path / "marker"
    weights = torch.load(workspace["ckpt"], weights_only=True)["model"]
    save_untrusted_checkpoint(crafted, weights, marker)
    out = tmp_path / "pred"
    with caplog.at_level(logging.ERROR, logger="inference"):
        assert _run(workspace["comp1k"], out, crafted) == 2
    assert "crafted.pth" in caplog.text and "--trust-checkpoint" in caplog.text
    assert not marker.exists() and not list(out.glob("*.png"))

    assert _run(workspace["comp1k"], out, crafted, "--trust-checkpoint") == 0
    assert marker.is_dir()  # trusted: the file's code ran, as the flag's help warns
    _assert_same_pngs(_read(out), expected_pngs(reference_model, workspace["comp1k"]))


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
    assert "trimap must be 8-bit" in caplog.text
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
