"""predictor.matting.MattingPredictor: the official PNGs of the golden model from paths, arrays and
PIL images (capped and uncapped), input conversions, masks, routing maps and bad inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from data.image_io import BadSampleError
from data.trimap import trimap_from_mask
from predictor.matting import MattingPredictor
from predictor.outputs import alpha_to_uint8
from tests.helpers import (
    ASSETS_DIR,
    CONFIG_S,
    DEMO_CHECKPOINT,
    GOLDEN_DIR,
    REPO_ROOT,
    SMALL_MODEL_OVERRIDES,
    TINY_CONFIG,
)

OFFICIAL_PNG_DIR = ASSETS_DIR / "official_png"
DEMO_IMAGE = REPO_ROOT / "demo" / "merged" / "test_000.png"
DEMO_TRIMAP = REPO_ROOT / "demo" / "trimaps" / "test_000.png"
DEMO_ALPHA = REPO_ROOT / "demo" / "alpha_copy" / "test_000.png"
# float32 implementations agree to ~5e-6 on alpha (tests/test_golden.py), so floor(alpha * 255)
# may land one level apart on a few pixels: at most 1 level, on at most this share of them.
MAX_OFF_BY_ONE_SHARE = 5e-4


# --- the golden model against the official PNGs ------------------------------------------------


@pytest.fixture(scope="module")
def golden_files(tmp_path_factory) -> dict[str, Path]:
    """The golden case as the files the official script read, and the golden weights as a
    checkpoint file."""
    if not GOLDEN_DIR.is_dir():
        pytest.skip("../shared/golden is not available")
    root = tmp_path_factory.mktemp("golden")
    golden = torch.load(GOLDEN_DIR / "golden_eval.pt", weights_only=False)  # shared reference
    case = golden["cases"][0]
    image = case["input_image_u8"][0].permute(1, 2, 0).numpy()  # [3, H, W] -> [H, W, 3] RGB
    trimap = np.array([0, 128, 255], np.uint8)[case["input_trimap_code"][0, 0].numpy()]
    cv2.imwrite(str(root / "image.png"), np.ascontiguousarray(image[:, :, ::-1]))
    cv2.imwrite(str(root / "trimap.png"), trimap)
    torch.save({"model": golden["state_dict"]}, root / "golden.pth")
    return {"image": root / "image.png", "trimap": root / "trimap.png", "ckpt": root / "golden.pth"}


def _golden_predictor(files: dict[str, Path], cap: int) -> MattingPredictor:
    overrides = [o for o in SMALL_MODEL_OVERRIDES if not o.startswith("model.teacher")]
    return MattingPredictor.from_config(
        CONFIG_S, files["ckpt"], device="cpu", max_number_token=cap, overrides=overrides
    )


def _assert_official(alpha: np.ndarray, official: np.ndarray) -> None:
    png = np.floor(alpha * np.float32(255)).astype(np.int64)
    difference = np.abs(png - official.astype(np.int64))
    assert difference.max() <= 1
    assert (difference > 0).mean() <= MAX_OFF_BY_ONE_SHARE


@pytest.mark.slow
@pytest.mark.parametrize(("cap", "every_input_form"), [(18500, True), (600, True), (200, False)])
def test_golden_model_reproduces_the_official_pngs(golden_files, cap, every_input_form):
    official = cv2.imread(str(OFFICIAL_PNG_DIR / f"official_cap{cap}.png"), cv2.IMREAD_UNCHANGED)
    predictor = _golden_predictor(golden_files, cap)
    image_bgr = cv2.imread(str(golden_files["image"]), cv2.IMREAD_COLOR)
    trimap = cv2.imread(str(golden_files["trimap"]), cv2.IMREAD_UNCHANGED)
    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
    from_paths = predictor(golden_files["image"], golden_files["trimap"])
    _assert_official(from_paths, official)
    inputs = {
        "path strings": (str(golden_files["image"]), str(golden_files["trimap"])),
        "arrays": (rgb, trimap),
        "PIL images": (Image.open(golden_files["image"]), Image.open(golden_files["trimap"])),
        "float tensor": (torch.from_numpy(rgb).permute(2, 0, 1) / 255.0, torch.from_numpy(trimap)),
    }
    for name, (image, trimap_input) in inputs.items() if every_input_form else ():
        np.testing.assert_array_equal(predictor(image, trimap_input), from_paths, err_msg=name)
    known = trimap != 128
    assert np.array_equal(from_paths[known], trimap[known] / np.float32(255))  # forced 0 and 1


# --- conversions, masks and routing on the tiny demo model -------------------------------------


@pytest.fixture(scope="module")
def demo_predictor() -> MattingPredictor:
    return MattingPredictor.from_config(TINY_CONFIG, DEMO_CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def demo_alpha(demo_predictor) -> np.ndarray:
    return demo_predictor(DEMO_IMAGE, DEMO_TRIMAP)


def test_alpha_is_float32_in_0_1_with_the_known_regions_forced(demo_alpha):
    trimap = cv2.imread(str(DEMO_TRIMAP), cv2.IMREAD_UNCHANGED)
    assert demo_alpha.dtype == np.float32 and demo_alpha.shape == trimap.shape
    assert demo_alpha.min() >= 0 and demo_alpha.max() <= 1
    assert (demo_alpha[trimap == 0] == 0).all() and (demo_alpha[trimap == 255] == 1).all()
    unknown = demo_alpha[trimap == 128]
    assert ((unknown > 0) & (unknown < 1)).mean() > 0.5  # the model's values, not forced


def test_pil_conversions_drop_alpha_and_replicate_gray(demo_predictor, demo_alpha, tmp_path):
    rgb = np.asarray(Image.open(DEMO_IMAGE).convert("RGB"))
    rgba = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]), "RGBA")
    assert np.array_equal(demo_predictor(rgba, DEMO_TRIMAP), demo_alpha)
    rgba.save(tmp_path / "rgba.png")
    assert np.array_equal(demo_predictor(tmp_path / "rgba.png", DEMO_TRIMAP), demo_alpha)
    gray = rgb[:, :, 1]
    from_gray = demo_predictor(Image.fromarray(gray, "L"), DEMO_TRIMAP)
    assert np.array_equal(from_gray, demo_predictor(np.dstack([gray] * 3), DEMO_TRIMAP))


def test_16_bit_images_are_scaled_by_65535(demo_predictor, tmp_path):
    rgb = np.asarray(Image.open(DEMO_IMAGE).convert("RGB")).astype(np.uint16) * 257 + 3
    cv2.imwrite(str(tmp_path / "deep.png"), rgb[:, :, ::-1])
    as_float = torch.from_numpy(rgb.astype(np.float32) / 65535).permute(2, 0, 1)
    np.testing.assert_array_equal(
        demo_predictor(tmp_path / "deep.png", DEMO_TRIMAP), demo_predictor(as_float, DEMO_TRIMAP)
    )


@pytest.mark.slow
def test_a_mask_equals_the_trimap_made_from_it(demo_predictor):
    mask = cv2.imread(str(DEMO_ALPHA), cv2.IMREAD_UNCHANGED)
    for width in (6, 0.05):
        trimap = trimap_from_mask(mask, width)
        from_mask = demo_predictor(DEMO_IMAGE, mask=DEMO_ALPHA, unknown_width=width)
        np.testing.assert_array_equal(from_mask, demo_predictor(DEMO_IMAGE, trimap))
        soft = mask.astype(np.float32) / 255  # the same mask as floats: thresholded at 0.5
        np.testing.assert_array_equal(
            demo_predictor(DEMO_IMAGE, mask=soft, unknown_width=width), from_mask
        )


def test_routing_maps_per_routed_block(demo_predictor, demo_alpha):
    alpha, routing = demo_predictor(DEMO_IMAGE, DEMO_TRIMAP, return_routing=True)
    assert np.array_equal(alpha, demo_alpha)
    blocks = demo_predictor.model.backbone.routed_block_indexes
    assert list(routing.keep) == list(routing.probability) == list(blocks)
    h, w = demo_alpha.shape
    for block in blocks:
        keep, probability = routing.keep[block], routing.probability[block]
        assert keep.shape == probability.shape and keep.shape[0] * 16 >= h
        assert set(np.unique(keep)) <= {0.0, 1.0}
        assert probability.min() >= 0 and probability.max() <= 1


def test_alpha_to_uint8_truncates_like_the_official_script():
    alpha = np.array([0.0, 0.5, 1 / 255 - 1e-7, 1.0, 0.99999], np.float32)
    assert alpha_to_uint8(alpha).tolist() == [0, 127, 0, 255, 254]
    assert alpha_to_uint8(alpha, rounding=True).tolist() == [0, 128, 1, 255, 255]


def test_bad_inputs_are_clear_errors(demo_predictor, tmp_path, caplog):
    trimap = cv2.imread(str(DEMO_TRIMAP), cv2.IMREAD_UNCHANGED)
    with pytest.raises(ValueError, match="either a trimap or a mask"):
        demo_predictor(DEMO_IMAGE)
    with pytest.raises(ValueError, match="either a trimap or a mask"):
        demo_predictor(DEMO_IMAGE, DEMO_TRIMAP, mask=DEMO_ALPHA, unknown_width=4)
    with pytest.raises(ValueError, match="unknown_width"):
        demo_predictor(DEMO_IMAGE, mask=DEMO_ALPHA)
    with pytest.raises(ValueError, match="differs|is .* but the image"):
        demo_predictor(DEMO_IMAGE, trimap[:-2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        demo_predictor(torch.full((3, *trimap.shape), 2.0), trimap)
    with pytest.raises(BadSampleError, match="colour"):
        demo_predictor(DEMO_IMAGE, np.dstack([trimap, trimap, 255 - trimap]))
    with pytest.raises(BadSampleError, match="nothere.png"):
        demo_predictor(tmp_path / "nothere.png", trimap)
    gradient = trimap.copy()
    gradient[:10] = 77  # not a trimap level: refused with the fix, or snapped (to 128) on request
    cv2.imwrite(str(tmp_path / "soft_trimap.png"), gradient)
    for soft in (tmp_path / "soft_trimap.png", gradient, Image.fromarray(gradient)):
        with pytest.raises(BadSampleError, match="neither 0, 128 nor 255.*snap_trimap=True"):
            demo_predictor(DEMO_IMAGE, soft)
    with caplog.at_level(logging.WARNING, logger="data.image_io"):
        alpha = demo_predictor(DEMO_IMAGE, tmp_path / "soft_trimap.png", snap_trimap=True)
    share = 100 * 10 * trimap.shape[1] / trimap.size
    assert "soft_trimap.png" in caplog.text and f"{share:.2f}%" in caplog.text
    snapped = trimap.copy()
    snapped[:10] = 128
    np.testing.assert_array_equal(alpha, demo_predictor(DEMO_IMAGE, snapped))


def test_construction_errors():
    with pytest.raises(ValueError, match="fp16"):
        MattingPredictor.from_config(TINY_CONFIG, DEMO_CHECKPOINT, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="max_number_token"):
        MattingPredictor.from_config(TINY_CONFIG, DEMO_CHECKPOINT, max_number_token="many")


def test_random_weights_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="predictor"):
        predictor = MattingPredictor.from_config(TINY_CONFIG, device="cpu")
    assert "random weights" in caplog.text
    assert predictor.model.teacher_backbone is None
