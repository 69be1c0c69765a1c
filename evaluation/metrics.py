"""Alpha matting metrics (SAD, MSE, Grad, Conn) as the official DIM MATLAB code computes them.

References: Deep Image Matting (Xu et al., CVPR 2017) evaluation code (`compute_sad_loss`,
`compute_mse_loss`, `compute_gradient_loss` + `gaussgradient`, `compute_connectivity_error`),
GCA-Matting copy as the canonical variant; specification in `shared/metrics/definitions.md`.

Conventions
-----------
* Inputs are ``[H, W]`` arrays. Integer arrays (normally uint8 read from PNG) are on the 0..255
  scale; floating-point arrays are on the [0, 1] scale and are multiplied by 255 first, exactly
  as the official functions were fed ``double(pred) * 255`` (unrounded).
* ``region="unknown"`` (default, the Composition-1k protocol): only pixels whose trimap value is
  exactly 128 enter the sums. Values such as 127 or 129 (resized trimaps) are *not* unknown.
* ``region="all"``: every pixel of the image enters the sums; the trimap is only checked for
  shape (it may be ``None``). This equals the official functions called with a trimap that is
  128 everywhere: SAD sums over all H*W pixels, MSE divides by H*W, Grad and Conn sum over all
  pixels (the whole-image protocol, as used for Distinctions-646).
* In both regions the Grad filter, its min-max normalisation and the Conn connected components
  always see the whole image; the region only selects which pixels are summed.
* The *official* values (what the .m files return) are SAD = sum|a - b| / 1000, MSE = mean
  (a - b)^2 over the region, Grad and Conn unscaled sums. `compute_metrics` returns *paper
  units*, the official values times `PAPER_UNIT_SCALE`: SAD as is, MSE x 1e3, Grad / 1e3,
  Conn / 1e3.
* Precision follows the .m files: SAD, MSE, Conn and the Grad error map are computed in IEEE
  single precision (the files cast to ``single``); the Grad filtering runs in double. Sums are
  accumulated in double, which moves results by about 1e-6 relative at most.
"""

import logging
import math
from typing import Literal

import numpy as np
from scipy import ndimage

from utils.levels import UINT8_MAX

logger = logging.getLogger(__name__)

__all__ = [
    "METRIC_NAMES",
    "PAPER_UNIT_SCALE",
    "Region",
    "compute_metrics",
    "gaussian_gradient_kernels",
    "region_mask",
    "to_paper_units",
]

Region = Literal["unknown", "all"]
REGIONS: tuple[str, ...] = ("unknown", "all")

METRIC_NAMES: tuple[str, ...] = ("sad", "mse", "grad", "conn")
# Official return -> number printed in papers (definitions.md section 7): SAD is already divided
# by 1000 inside compute_sad_loss; MSE is printed in units of 1e-3; evaluate.m / hleval.m divide
# Grad and Conn by 1000.
PAPER_UNIT_SCALE: dict[str, float] = {"sad": 1.0, "mse": 1e3, "grad": 1e-3, "conn": 1e-3}

UNKNOWN_VALUE = 128  # trimap value of the unknown region (exact match only)
SAD_DIVISOR = 1000.0  # compute_sad_loss: "scaled by 1000 due to the large images"

GRAD_SIGMA = 1.4  # gaussgradient sigma used by compute_gradient_loss
GRAD_EPSILON = 0.01  # gaussgradient truncation: half size where the Gaussian density is 0.01

CONN_STEP = 0.1  # threshold step evaluate.m passes to compute_connectivity_error
CONN_NUM_LEVELS = 10  # levels 0.1, 0.2, ..., 1.0 (= 1 / CONN_STEP)
CONN_THETA = 0.15  # phi is 1 - d only where d = alpha - level >= 0.15
# bwconncomp(..., 4): edge neighbours only.
FOUR_CONNECTIVITY = ndimage.generate_binary_structure(2, 1)


def region_mask(trimap: np.ndarray | None, shape: tuple[int, ...], region: Region) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the pixels that enter the metric sums.

    Args:
        trimap: ``[H, W]`` trimap on the 0..255 scale (unknown == 128 exactly). May be ``None``
            only when ``region == "all"``.
        shape: ``(H, W)`` of the alpha mattes, checked against the trimap.
        region: ``"unknown"`` (trimap == 128) or ``"all"`` (every pixel).

    Returns:
        Boolean mask of shape ``shape``.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    if trimap is None:
        if region == "unknown":
            raise ValueError('a trimap is required for region="unknown"')
        return np.ones(shape, dtype=bool)
    trimap = _check_array(trimap, "trimap")
    if trimap.shape != shape:
        raise ValueError(f"trimap shape {trimap.shape} does not match alpha shape {shape}")
    if region == "all":
        return np.ones(shape, dtype=bool)
    if trimap.dtype.kind == "f" and 0.0 < np.nanmax(trimap) <= 1.0:
        logger.warning(
            "trimap is floating point with values <= 1: it looks like a 0/0.5/1 map, but the "
            "unknown region is trimap == %d on the 0..255 scale, so no pixel is unknown",
            UNKNOWN_VALUE,
        )
    return trimap == UNKNOWN_VALUE


def compute_metrics(
    pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None, region: Region = "unknown"
) -> dict[str, float]:
    """All four metrics in paper units.

    Args:
        pred: ``[H, W]`` predicted alpha: uint8 (or any integer type) on 0..255, or float in
            [0, 1] (multiplied by 255 as the official evaluation was fed).
        gt: ``[H, W]`` ground-truth alpha, same conventions (normally uint8).
        trimap: ``[H, W]`` trimap on 0..255; only pixels equal to 128 are unknown. ``None`` is
            allowed with ``region="all"``.
        region: ``"unknown"`` (default; trimap == 128) or ``"all"`` (whole image).

    Returns:
        ``{"sad", "mse", "grad", "conn"}``: SAD (sum / 1000), MSE x 1e3, Grad / 1e3,
        Conn / 1e3. MSE is NaN when the region is empty.
    """
    pred_255, gt_255, mask = _prepare(pred, gt, trimap, region)
    official = {
        "sad": _sad(pred_255, gt_255, mask),
        "mse": _mse(pred_255, gt_255, mask),
        "grad": _grad(pred_255, gt_255, mask),
        "conn": _conn(pred_255, gt_255, mask),
    }
    return to_paper_units(official)


def to_paper_units(official: dict[str, float]) -> dict[str, float]:
    """Scale official return values to the units papers print (`PAPER_UNIT_SCALE`).

    Args:
        official: ``{"sad", "mse", "grad", "conn"}`` as the official functions return them.

    Returns:
        The same keys in paper units.
    """
    return {name: float(official[name]) * PAPER_UNIT_SCALE[name] for name in METRIC_NAMES}


# ---------------------------------------------------------------------------------------------
# Input handling


def _check_array(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as a non-empty 2-D real numeric ndarray, or raise with a clear message."""
    array = np.asarray(array)
    if array.dtype.kind not in "uif":
        raise TypeError(f"{name} must be an integer or float array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D [H, W] single-channel array, got shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    return array


def _to_255_scale(array: np.ndarray, name: str) -> np.ndarray:
    """Alpha as float64 on the 0..255 scale: integers as they are, floats x 255 (unrounded)."""
    array = _check_array(array, name)
    if array.dtype.kind == "f":
        finite = array[np.isfinite(array)]
        if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
            logger.warning(
                "%s is floating point with values in [%g, %g]; float alphas are taken on the "
                "[0, 1] scale and multiplied by 255",
                name,
                finite.min(),
                finite.max(),
            )
        return array.astype(np.float64) * UINT8_MAX
    if array.min() < 0 or array.max() > UINT8_MAX:
        raise ValueError(
            f"{name} is an integer array with values in [{array.min()}, {array.max()}]; "
            "integer alphas must be on the 0..255 scale (convert 16-bit images first)"
        )
    return array.astype(np.float64)


def _prepare(
    pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None, region: Region
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate inputs; return pred and gt as float64 on 0..255 and the region mask."""
    pred_255 = _to_255_scale(pred, "pred")
    gt_255 = _to_255_scale(gt, "gt")
    if pred_255.shape != gt_255.shape:
        raise ValueError(f"pred shape {pred_255.shape} does not match gt shape {gt_255.shape}")
    mask = region_mask(trimap, pred_255.shape, region)
    return pred_255, gt_255, mask


def _to_unit_single(alpha_255: np.ndarray) -> np.ndarray:
    """``single(x) / 255`` in IEEE single precision, as the .m files compute it."""
    return alpha_255.astype(np.float32) / np.float32(UINT8_MAX)


# ---------------------------------------------------------------------------------------------
# SAD and MSE


def _sad(pred_255: np.ndarray, gt_255: np.ndarray, mask: np.ndarray) -> float:
    """Official SAD (`compute_sad_loss`) from validated inputs (``[H, W]`` float64 on 0..255,
    boolean mask): sum of |pred - gt| on the [0, 1] scale over the region, / 1000."""
    diff = pred_255[mask].astype(np.float32) - gt_255[mask].astype(np.float32)
    error = np.abs(diff) / np.float32(UINT8_MAX)
    return float(error.sum(dtype=np.float64) / SAD_DIVISOR)


def _mse(pred_255: np.ndarray, gt_255: np.ndarray, mask: np.ndarray) -> float:
    """Official MSE (`compute_mse_loss`) from validated inputs: mean of (pred - gt)^2 on the
    [0, 1] scale, numerator and denominator over the region only; NaN for an empty region (0 / 0,
    as in MATLAB/Octave)."""
    count = int(mask.sum())
    if count == 0:
        return math.nan
    diff = (pred_255[mask].astype(np.float32) - gt_255[mask].astype(np.float32)) / np.float32(
        UINT8_MAX
    )
    return float(np.square(diff).sum(dtype=np.float64) / count)


# ---------------------------------------------------------------------------------------------
# Grad


def _gauss(u: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian density ``exp(-u^2 / (2 sigma^2)) / (sigma sqrt(2 pi))``."""
    return np.exp(-(u**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))


def _gauss_derivative(u: np.ndarray, sigma: float) -> np.ndarray:
    """Derivative of `_gauss`: ``-u G(u) / sigma^2``."""
    return -u * _gauss(u, sigma) / sigma**2


def gaussian_gradient_kernels(
    sigma: float = GRAD_SIGMA, epsilon: float = GRAD_EPSILON
) -> tuple[np.ndarray, np.ndarray, float]:
    """Separable factors of `gaussgradient`'s kernel ``K_x(r, c) = G(r) G'(c) / norm``.

    The half size is ``ceil(sigma sqrt(-2 ln(sqrt(2 pi) sigma epsilon)))`` (4 for sigma 1.4, a
    9x9 kernel); ``norm`` makes the sum of squared kernel entries 1 (not unit gain).
    ``K_y`` is the transpose of ``K_x``.

    Args:
        sigma: Gaussian standard deviation in pixels.
        epsilon: truncation parameter of the kernel half size.

    Returns:
        ``(gauss, dgauss, norm)``: the 1-D Gaussian and derivative taps for offsets
        ``-h..h`` and the L2 norm of the outer product.
    """
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * epsilon)))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    gauss = _gauss(offsets, sigma)
    dgauss = _gauss_derivative(offsets, sigma)
    norm = math.sqrt(float(np.sum(np.square(np.outer(gauss, dgauss)))))
    return gauss, dgauss, norm


def _mat2gray(image: np.ndarray) -> np.ndarray:
    """MATLAB ``mat2gray``: min-max normalise to [0, 1]; a constant image is clamped to [0, 1]."""
    low, high = float(image.min()), float(image.max())
    if high == low:
        return np.clip(image, 0.0, 1.0)
    return (image - low) / (high - low)


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """``sqrt(gx^2 + gy^2)`` of `gaussgradient` on a ``[H, W]`` float64 image, rounded to single.

    ``imfilter(I, K, 'replicate', 'conv')`` with the separable kernel: convolve along rows (axis
    0) and columns (axis 1) with the 1-D factors; "nearest" mode replicates the edge pixel however
    far the kernel reaches, so images smaller than the kernel work.
    """
    gauss, dgauss, norm = gaussian_gradient_kernels()
    # K_x = G(row offset) * G'(column offset): smooth vertically, differentiate horizontally.
    smooth_rows = ndimage.convolve1d(image, gauss, axis=0, mode="nearest")
    grad_x = ndimage.convolve1d(smooth_rows, dgauss, axis=1, mode="nearest") / norm
    # K_y = K_x transposed: differentiate vertically, smooth horizontally.
    smooth_cols = ndimage.convolve1d(image, gauss, axis=1, mode="nearest")
    grad_y = ndimage.convolve1d(smooth_cols, dgauss, axis=0, mode="nearest") / norm
    return np.sqrt(grad_x**2 + grad_y**2).astype(np.float32)


def _grad(pred_255: np.ndarray, gt_255: np.ndarray, mask: np.ndarray) -> float:
    """Official Grad (`compute_gradient_loss`) from validated inputs.

    Each image is min-max normalised over the whole image (`mat2gray`), filtered with the
    L2-normalised 9x9 Gaussian-derivative kernels of `gaussgradient` (sigma 1.4, replicated
    border, true convolution); the squared difference of the gradient magnitudes (rounded to
    single) is summed over the mask.
    """
    pred_amp = _gradient_magnitude(_mat2gray(pred_255))
    gt_amp = _gradient_magnitude(_mat2gray(gt_255))
    error = np.square(pred_amp[mask] - gt_amp[mask])  # single precision, as in the .m file
    return float(error.sum(dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# Conn


def _conn_levels() -> np.ndarray:
    """Thresholds ``0, 0.1, ..., 1.0`` as Octave's ``0:0.1:1`` holds them (``k * 0.1``, last 1)."""
    levels = np.arange(CONN_NUM_LEVELS + 1, dtype=np.float64) * CONN_STEP
    levels[-1] = 1.0
    return levels


def _largest_component(binary_t: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a transposed binary image, MATLAB tie-break.

    Args:
        binary_t: ``[W, H]`` C-contiguous boolean array: the *transpose* of the image, so that a
            row-major scan of it is MATLAB's column-major scan of the image.

    Returns:
        ``[W, H]`` boolean mask of the largest component (all False if there is none). Among
        equally large components the one whose first pixel comes first in the scan wins, like
        ``[~, id] = max(cellfun(@numel, cc.PixelIdxList))`` on ``bwconncomp`` output.
    """
    labels, num = ndimage.label(binary_t, structure=FOUR_CONNECTIVITY)
    if num == 0:
        return np.zeros_like(binary_t)
    flat = labels.ravel()
    sizes = np.bincount(flat)
    sizes[0] = 0  # background is never a component
    is_largest = sizes == sizes.max()
    if np.count_nonzero(is_largest) == 1:
        best = int(np.argmax(sizes))
    else:
        # First pixel in scan order that belongs to any of the tied components.
        best = int(flat[np.argmax(is_largest[flat])])
    return labels == best


def _conn(pred_255: np.ndarray, gt_255: np.ndarray, mask: np.ndarray) -> float:
    """Official Conn (`compute_connectivity_error(pred, gt, trimap, 0.1)`, GCA variant) from
    validated inputs.

    Components are 4-connected and ties between equally large components go to the one whose
    first pixel comes first in column-major order (MATLAB's `bwconncomp` labelling). An empty
    intersection of the thresholded mattes leaves the largest component empty (GCA-Matting's
    guard). Works on transposed arrays so that labels follow MATLAB's column-major order; the
    final sum does not depend on the layout. Arithmetic is single precision as in the .m file,
    with the double thresholds demoted to single (Octave's mixed single/double rule).
    """
    pred_t = np.ascontiguousarray(_to_unit_single(pred_255).T)  # [W, H]
    gt_t = np.ascontiguousarray(_to_unit_single(gt_255).T)  # [W, H]
    levels = _conn_levels()
    levels_single = levels.astype(np.float32)

    level_map = np.ones(pred_t.shape, dtype=np.float32)  # pixels never dropped end at level 1
    undefined = np.ones(pred_t.shape, dtype=bool)
    for k in range(1, CONN_NUM_LEVELS + 1):
        both = (pred_t >= levels_single[k]) & (gt_t >= levels_single[k])
        omega = _largest_component(both)
        dropped = undefined & ~omega
        level_map[dropped] = levels_single[k - 1]
        undefined &= omega
        if not undefined.any():
            break

    theta = np.float32(CONN_THETA)
    pred_d = pred_t - level_map
    gt_d = gt_t - level_map
    pred_phi = np.float32(1.0) - pred_d * (pred_d >= theta)
    gt_phi = np.float32(1.0) - gt_d * (gt_d >= theta)
    error = np.abs(pred_phi - gt_phi)[mask.T]
    return float(error.sum(dtype=np.float64))
