"""Tests for evaluation.metrics: official goldens, hand-computed toys, a naive reference, errors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from evaluation.metrics import (
    PAPER_UNIT_SCALE,
    compute_metrics,
    gaussian_gradient_kernels,
    to_paper_units,
)

SHARED_METRICS = Path(__file__).resolve().parents[3] / "shared" / "metrics"
REL_TOL = 1e-4  # the checker's tolerance (definitions.md section 10)
ABS_TOL = 1e-9
# The official function behind each metric.
OFFICIAL_FUNCTIONS = {
    "sad": "compute_sad_loss",
    "mse": "compute_mse_loss",
    "grad": "compute_gradient_loss",
    "conn": "compute_connectivity_error",
}


def official(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None) -> dict[str, float]:
    """The metrics as the official functions return them (paper units / PAPER_UNIT_SCALE)."""
    return {
        name: v / PAPER_UNIT_SCALE[name] for name, v in compute_metrics(pred, gt, trimap).items()
    }


def _load_cases() -> list[dict]:
    expected_path = SHARED_METRICS / "expected.json"
    if not expected_path.exists():
        return []
    return json.loads(expected_path.read_text())["cases"]


CASES = _load_cases()


def _assert_close(actual: float, expected: float | None) -> None:
    if expected is None:  # null in expected.json means NaN
        assert math.isnan(actual)
    else:
        assert actual == pytest.approx(expected, rel=REL_TOL, abs=ABS_TOL)


@pytest.fixture(scope="module")
def shared_arrays():
    if not CASES:
        pytest.skip(f"shared metric goldens not found in {SHARED_METRICS}")
    return np.load(SHARED_METRICS / "cases.npz")


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_shared_goldens(case: dict, shared_arrays) -> None:
    keys = case["keys"]
    pred, gt, trimap = (shared_arrays[keys[k]] for k in ("pred", "gt", "trimap"))
    reported = compute_metrics(pred, gt, trimap)
    for name in ("sad", "mse", "grad"):
        _assert_close(reported[name], case["reported"][name])
    # Conn follows the GCA variant (the canonical one).
    _assert_close(reported["conn"], case["conn_variants_raw"]["gca"] * 1e-3)
    returned = official(pred, gt, trimap)
    for name, official_name in OFFICIAL_FUNCTIONS.items():
        _assert_close(returned[name], case["official_return"][official_name])


# ---------------------------------------------------------------------------------------------
# Hand-computed toys


def test_sad_mse_toy() -> None:
    pred = np.array([[255, 0], [128, 0]], dtype=np.uint8)
    gt = np.zeros((2, 2), dtype=np.uint8)
    trimap = np.array([[128, 128], [128, 0]], dtype=np.uint8)  # bottom-right not counted
    expected_sad = (1.0 + 128 / 255) / 1000
    expected_mse = (1.0 + (128 / 255) ** 2) / 3
    assert official(pred, gt, trimap)["sad"] == pytest.approx(expected_sad, rel=1e-6)
    assert official(pred, gt, trimap)["mse"] == pytest.approx(expected_mse, rel=1e-6)


def test_uint8_difference_does_not_wrap() -> None:
    pred = np.array([[10]], dtype=np.uint8)
    gt = np.array([[50]], dtype=np.uint8)
    trimap = np.array([[128]], dtype=np.uint8)
    assert official(pred, gt, trimap)["sad"] == pytest.approx(40 / 255 / 1000, rel=1e-6)


def test_float_pred_is_scaled_by_255() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (12, 10)).astype(np.uint8)
    pred_u8 = rng.integers(0, 256, (12, 10)).astype(np.uint8)
    trimap = np.full((12, 10), 128, dtype=np.uint8)
    from_float = compute_metrics(pred_u8.astype(np.float32) / np.float32(255), gt, trimap)
    from_uint8 = compute_metrics(pred_u8, gt, trimap)
    for name in from_uint8:
        assert from_float[name] == pytest.approx(from_uint8[name], rel=1e-5, abs=ABS_TOL)


def test_stray_trimap_values_are_not_unknown() -> None:
    pred = np.full((1, 5), 255, dtype=np.uint8)
    gt = np.zeros((1, 5), dtype=np.uint8)
    trimap = np.array([[127, 128, 129, 1, 254]], dtype=np.uint8)
    assert official(pred, gt, trimap)["sad"] == pytest.approx(1 / 1000, rel=1e-6)


def test_no_unknown_pixel() -> None:
    pred = np.full((3, 3), 200, dtype=np.uint8)
    gt = np.zeros((3, 3), dtype=np.uint8)
    metrics = compute_metrics(pred, gt, np.zeros((3, 3), dtype=np.uint8))
    assert metrics["sad"] == 0 and metrics["grad"] == 0 and metrics["conn"] == 0
    assert math.isnan(metrics["mse"])


def test_single_pixel_image() -> None:
    # No pixel is 255 in both: every B_k is empty, the pixel gets level 0 (GCA variant), so
    # phi(pred) = 1 - 1 = 0 and phi(gt) = 1. Constant images have zero gradient.
    metrics = compute_metrics(
        np.array([[255]], np.uint8), np.array([[0]], np.uint8), np.array([[128]], np.uint8)
    )
    assert metrics == pytest.approx({"sad": 1e-3, "mse": 1e3, "grad": 0.0, "conn": 1e-3})


@pytest.mark.parametrize(("value", "expected"), [(102, 153 / 255), (101, 0.7)])
def test_conn_level_tie_passes(value: int, expected: float) -> None:
    # gt is 1 everywhere, pred is 1 except one pixel. 102/255 = 0.4 passes level 0.4 exactly,
    # so the pixel leaves the main component at 0.5 with level 0.4: phi(pred) = 1 (d = 0),
    # phi(gt) = 1 - 0.6. With 101 it leaves at 0.4 with level 0.3: phi(gt) = 1 - 0.7.
    pred = np.full((4, 4), 255, dtype=np.uint8)
    pred[0, 0] = value
    gt = np.full((4, 4), 255, dtype=np.uint8)
    trimap = np.full((4, 4), 128, dtype=np.uint8)
    assert official(pred, gt, trimap)["conn"] == pytest.approx(expected, rel=1e-6)


def test_conn_tie_break_is_column_major() -> None:
    # Two 2-pixel components, A at (0, 1)-(0, 2) and B at (1, 0)-(2, 0). Row-major scan meets A
    # first, column-major (MATLAB) meets B first, so B is the main component: A drops at level
    # 0.1 with level 0 and scores 2 * |phi(1) - phi(230/255)| = 2 * 25/255. Choosing A would
    # give 0.
    pred = np.zeros((3, 3), dtype=np.uint8)
    pred[0, 1:] = 255
    pred[1:, 0] = 255
    gt = pred.copy()
    gt[0, 1:] = 230
    trimap = np.full((3, 3), 128, dtype=np.uint8)
    assert official(pred, gt, trimap)["conn"] == pytest.approx(50 / 255, rel=1e-6)


def test_conn_is_four_connected() -> None:
    # A diagonal pair is two components under 4-connectivity: the larger (2 px, right column)
    # wins and the diagonal pixel at (0, 0) drops at level 0.1.
    pred = np.zeros((3, 3), dtype=np.uint8)
    pred[0, 0] = 255
    pred[1:, 1] = 255
    gt = pred.copy()
    gt[0, 0] = 200
    trimap = np.full((3, 3), 128, dtype=np.uint8)
    expected = abs((1 - 1.0) - (1 - 200 / 255))
    assert official(pred, gt, trimap)["conn"] == pytest.approx(expected, rel=1e-6)


def test_gradient_kernel_matches_definition() -> None:
    gauss, dgauss, norm = gaussian_gradient_kernels()
    assert gauss.shape == (9,)  # half size ceil(3.624) = 4
    centre_row = gauss[4] * dgauss / norm
    expected = [0.02749, 0.12295, 0.29347, 0.31543, 0.0, -0.31543, -0.29347, -0.12295, -0.02749]
    np.testing.assert_allclose(centre_row, expected, atol=1e-5)
    # Unit-slope ramp: the L2-normalised kernel answers about 9.68 (not unit gain).
    gain = gauss.sum() * np.sum(-np.arange(-4, 5) * dgauss) / norm
    assert gain == pytest.approx(9.68, abs=0.01)


def test_gradient_two_pixel_step() -> None:
    # pred = [0, 255] (1x2), gt constant. Rows are replicated, so gy = 0 and the Gaussian factor
    # sums to sum(G); at both columns the derivative factor sums G'(u) over u = -4..-1.
    gauss, dgauss, norm = gaussian_gradient_kernels()
    magnitude = gauss.sum() * dgauss[:4].sum() / norm
    pred = np.array([[0, 255]], dtype=np.uint8)
    gt = np.zeros((1, 2), dtype=np.uint8)
    trimap = np.full((1, 2), 128, dtype=np.uint8)
    assert official(pred, gt, trimap)["grad"] == pytest.approx(2 * magnitude**2, rel=1e-6)


def test_gradient_is_min_max_normalised_and_inversion_invariant() -> None:
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    gt[0, 0], gt[0, 1] = 0, 255
    trimap = np.full((16, 16), 128, dtype=np.uint8)
    stretched = (gt / 255 * 100 + 50) / 255  # float alpha spanning 50..150 on the 0..255 scale
    assert official(stretched, gt, trimap)["grad"] == pytest.approx(0.0, abs=1e-9)
    assert official(255 - gt, gt, trimap)["grad"] == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Naive reference: a loop-by-loop reading of definitions.md, on tiny random images


def _reference_grad(pred_255: np.ndarray, gt_255: np.ndarray, mask: np.ndarray) -> float:
    half, sigma = 4, 1.4
    u = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    kernel_x = np.outer(gauss, -u * gauss / sigma**2)
    kernel_x /= math.sqrt(np.sum(kernel_x**2))

    def magnitude(image: np.ndarray) -> np.ndarray:
        low, high = image.min(), image.max()
        image = np.clip(image, 0, 1) if high == low else (image - low) / (high - low)
        padded = np.pad(image, half, mode="edge")
        height, width = image.shape
        gx, gy = np.zeros_like(image), np.zeros_like(image)
        for y in range(height):
            for x in range(width):
                for r in range(-half, half + 1):
                    for c in range(-half, half + 1):
                        value = padded[y - r + half, x - c + half]  # true convolution
                        gx[y, x] += kernel_x[r + half, c + half] * value
                        gy[y, x] += kernel_x[c + half, r + half] * value
        return np.sqrt(gx**2 + gy**2).astype(np.float32)

    return float(np.sum((magnitude(pred_255) - magnitude(gt_255))[mask] ** 2, dtype=np.float64))


def _reference_conn(pred_255: np.ndarray, gt_255: np.ndarray, mask: np.ndarray) -> float:
    a = pred_255.astype(np.float32) / np.float32(255)
    b = gt_255.astype(np.float32) / np.float32(255)
    height, width = a.shape
    levels = [np.float32(k * 0.1 if k < 10 else 1.0) for k in range(11)]
    level_map = np.full(a.shape, np.nan, dtype=np.float32)
    for k in range(1, 11):
        inside = (a >= levels[k]) & (b >= levels[k])
        labels = np.zeros(a.shape, dtype=int)
        sizes = []
        for x in range(width):  # column-major scan, as MATLAB's bwconncomp
            for y in range(height):
                if inside[y, x] and labels[y, x] == 0:
                    sizes.append(0)
                    stack = [(y, x)]
                    labels[y, x] = len(sizes)
                    while stack:
                        cy, cx = stack.pop()
                        sizes[-1] += 1
                        for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                            in_image = 0 <= ny < height and 0 <= nx < width
                            if in_image and inside[ny, nx] and labels[ny, nx] == 0:
                                labels[ny, nx] = len(sizes)
                                stack.append((ny, nx))
        omega = labels == (int(np.argmax(sizes)) + 1) if sizes else np.zeros(a.shape, bool)
        level_map[np.isnan(level_map) & ~omega] = levels[k - 1]
    level_map[np.isnan(level_map)] = 1.0
    theta = np.float32(0.15)
    phi_a = np.where(a - level_map >= theta, np.float32(1) - (a - level_map), np.float32(1))
    phi_b = np.where(b - level_map >= theta, np.float32(1) - (b - level_map), np.float32(1))
    return float(np.sum(np.abs(phi_a - phi_b)[mask], dtype=np.float64))


def _random_case(rng: np.random.Generator, shape: tuple[int, int]):
    # Few distinct values (ties, exact levels such as 153) and blobs make components matter.
    values = np.array([0, 25, 51, 102, 127, 153, 178, 204, 230, 255], dtype=np.uint8)
    gt = values[rng.integers(0, len(values), shape)]
    pred = np.where(rng.random(shape) < 0.3, values[rng.integers(0, len(values), shape)], gt)
    if rng.random() < 0.5:
        gt = np.maximum(gt, (rng.random(shape) < 0.5) * 255).astype(np.uint8)
        pred = np.maximum(pred, (gt == 255) * 255).astype(np.uint8)
    trimap = rng.choice(np.array([0, 128, 128, 128, 255, 127], dtype=np.uint8), shape)
    return pred.astype(np.uint8), gt, trimap


@pytest.mark.parametrize("seed", range(12))
def test_matches_naive_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (2, 2), (1, 7), (6, 1), (5, 7), (11, 9)]
    pred, gt, trimap = _random_case(rng, shapes[seed % len(shapes)])
    mask = trimap == 128
    pred_255, gt_255 = pred.astype(np.float64), gt.astype(np.float64)
    assert official(pred, gt, trimap)["grad"] == pytest.approx(
        _reference_grad(pred_255, gt_255, mask), rel=1e-6, abs=1e-12
    )
    assert official(pred, gt, trimap)["conn"] == pytest.approx(
        _reference_conn(pred_255, gt_255, mask), rel=1e-6, abs=1e-12
    )


# ---------------------------------------------------------------------------------------------
# Region and units


def test_region_all_equals_all_unknown_trimap() -> None:
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 256, (9, 13)).astype(np.uint8)
    gt = rng.integers(0, 256, (9, 13)).astype(np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], dtype=np.uint8), (9, 13))
    whole = compute_metrics(pred, gt, np.full((9, 13), 128, dtype=np.uint8))
    assert compute_metrics(pred, gt, trimap, region="all") == whole
    assert compute_metrics(pred, gt, None, region="all") == whole
    assert compute_metrics(pred, gt, trimap) != whole


def test_paper_units() -> None:
    official = {"sad": 21.46, "mse": 0.003, "grad": 7240.0, "conn": 16210.0}
    assert to_paper_units(official) == pytest.approx(
        {"sad": 21.46, "mse": 3.0, "grad": 7.24, "conn": 16.21}
    )


# ---------------------------------------------------------------------------------------------
# Input validation


def test_input_errors() -> None:
    ok = np.zeros((4, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match="does not match gt shape"):
        compute_metrics(ok, np.zeros((5, 4), dtype=np.uint8), ok)
    with pytest.raises(ValueError, match="trimap shape"):
        compute_metrics(ok, ok, np.zeros((4, 6), dtype=np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        compute_metrics(np.zeros((4, 5, 3), dtype=np.uint8), ok, ok)
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(np.zeros((0, 5)), np.zeros((0, 5)), np.zeros((0, 5)))
    with pytest.raises(ValueError, match="0..255"):
        compute_metrics(np.full((4, 5), 256, dtype=np.int32), ok, ok)
    with pytest.raises(ValueError, match="region"):
        compute_metrics(ok, ok, ok, region="known")
    with pytest.raises(ValueError, match="trimap is required"):
        compute_metrics(ok, ok, None)
    with pytest.raises(TypeError, match="dtype"):
        compute_metrics(ok.astype(bool), ok, ok)
