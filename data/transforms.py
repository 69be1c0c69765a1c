"""Training augmentations of the DIM/Composition-1k pipeline, in the official order.

References: ViTMatte (data/dim_dataset.py), itself taken from GCA-Matting (dataloader/). MEMatte
trains with the same pipeline.

Every transform is called as ``transform(sample, rng)`` and draws all its randomness from the
``numpy.random.Generator`` it is given (no global random state). Arrays inside the pipeline follow
the official conventions, with RGB channel order:

- ``fg``: ``[H, W, 3]`` uint8 (float32 in 0..255 after ``RandomJitter``),
- ``alpha``: ``[H, W]`` float32 in 0..1 (may overshoot slightly after cubic/Lanczos resampling,
  clipped by ``Composite``),
- ``bg``: ``[h, w, 3]`` uint8, any size until ``RandomCrop`` resizes it to the foreground,
- ``trimap``: ``[H, W]`` uint8 with values {0, 128, 255} (from ``GenTrimap``),
- ``image``: ``[H, W, 3]`` float32 in 0..255 (from ``Composite``).

``ToTensor`` turns them into the tensors the meta-architecture expects, the trimap quantized to
{0, 0.5, 1} with the official thresholds.
"""

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from data.trimap import TRIMAP_UNKNOWN, erosion_trimap, quantize_trimap
from utils.levels import UINT8_MAX

logger = logging.getLogger(__name__)

__all__ = [
    "INTERPOLATIONS",
    "Composite",
    "Compose",
    "GenTrimap",
    "RandomAffine",
    "RandomCrop",
    "RandomJitter",
    "RandomResize",
    "ToTensor",
    "affine_matrix",
    "composite_two_foregrounds",
    "random_interpolation",
    "train_transforms",
]

Sample = dict[str, Any]
Transform = Callable[[Sample, np.random.Generator], Sample]

# Interpolations drawn at random for every image resize/warp (official `interp_list`).
INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)


def random_interpolation(rng: np.random.Generator) -> int:
    """One of ``INTERPOLATIONS``, uniformly (official ``maybe_random_interp``)."""
    return INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))]


def _resize(image: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=interpolation)


class Compose:
    """Apply transforms in order, passing each the same generator.

    Args:
        transforms: callables ``(sample, rng) -> sample``.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = tuple(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


def composite_two_foregrounds(
    fg: np.ndarray,
    alpha: np.ndarray,
    fg2: np.ndarray,
    alpha2: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Overlay a first foreground on a second one (official ``_composite_fg``).

    The second pair is resized to the first; colours mix as ``fg * a + fg2 * (1 - a)`` and the
    alphas as ``1 - (1 - a)(1 - a2)`` (two 50% layers give 75%). A pair that would become fully
    opaque everywhere is left unchanged.

    Args:
        fg, alpha: ``[H, W, 3]`` uint8 and ``[H, W]`` float32.
        fg2, alpha2: the second pair, any size.
        rng: source of the resampling interpolations.

    Returns:
        ``(fg [H, W, 3] uint8, alpha [H, W] float32)``.
    """
    height, width = alpha.shape
    fg2 = _resize(fg2, width, height, random_interpolation(rng))
    alpha2 = _resize(alpha2, width, height, random_interpolation(rng))
    merged_alpha = 1 - (1 - alpha) * (1 - alpha2)
    if not np.any(merged_alpha < 1):
        return fg, alpha
    a = alpha[:, :, None]
    merged_fg = fg.astype(np.float32) * a + fg2.astype(np.float32) * (1 - a)
    return merged_fg.astype(np.uint8), merged_alpha  # truncation, as the official cast


class RandomResize:
    """With probability ``prob``, resize ``fg`` and ``alpha`` to ``size x size``.

    Args:
        size: side of the square output in pixels (official: 640).
        prob: probability of resizing (official: 0.25).
    """

    def __init__(self, *, size: int = 640, prob: float = 0.25) -> None:
        self.size = size
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() < self.prob:
            sample["fg"] = _resize(sample["fg"], self.size, self.size, random_interpolation(rng))
            sample["alpha"] = _resize(
                sample["alpha"], self.size, self.size, random_interpolation(rng)
            )
        return sample


def affine_matrix(
    center: tuple[float, float],
    angle: float,
    scale: tuple[float, float],
    shear: float,
    flip: tuple[float, float],
) -> np.ndarray:
    """Forward 2x3 affine matrix about ``center``: the inverse of the official one.

    The linear part is ``[[cos(a + s), -sin(a + s)], [sin(a), cos(a)]] @ diag(sx * fx, sy * fy)``
    for rotation ``a`` and shear ``s`` (radians), scales ``sx, sy`` and flips ``fx, fy`` in {-1, 1}:
    the matrix whose inverse the official code builds (the shear convention of torchvision 0.2).

    Args:
        center: ``(x, y)`` fixed point in pixels.
        angle, shear: degrees.
        scale: ``(sx, sy)``.
        flip: ``(fx, fy)``, -1 mirrors that axis.

    Returns:
        ``[2, 3]`` float64 matrix mapping source to destination pixel coordinates.
    """
    a, s = math.radians(angle), math.radians(shear)
    rotation_shear = np.array([[math.cos(a + s), -math.sin(a + s)], [math.sin(a), math.cos(a)]])
    linear = rotation_shear @ np.diag([scale[0] * flip[0], scale[1] * flip[1]])
    c = np.asarray(center)
    return np.concatenate([linear, (c - linear @ c)[:, None]], axis=1)  # [2, 2] | [2, 1]


class RandomAffine:
    """Random rotation, anisotropic scale, shear and flips of ``fg`` and ``alpha``.

    Rotation is applied only to images whose longer side is at least ``rotate_min_size`` (official
    behaviour); each axis is mirrored independently with probability ``flip_prob`` (horizontal and
    vertical flips, as the official code); ``fg`` and ``alpha`` get independent random
    interpolations. The output keeps the input size; uncovered pixels are 0.

    Args:
        degrees: rotation range ``[-degrees, degrees]``.
        scale: range of the per-axis scale factors.
        shear: shear range ``[-shear, shear]`` in degrees.
        flip_prob: probability of mirroring each axis.
        rotate_min_size: minimum longer side (pixels) for rotation to be drawn.
    """

    def __init__(
        self,
        *,
        degrees: float = 30.0,
        scale: tuple[float, float] = (0.8, 1.25),
        shear: float = 10.0,
        flip_prob: float = 0.5,
        rotate_min_size: int = 1024,
    ) -> None:
        self.degrees = degrees
        self.scale = scale
        self.shear = shear
        self.flip_prob = flip_prob
        self.rotate_min_size = rotate_min_size

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        fg, alpha = sample["fg"], sample["alpha"]
        rows, cols = alpha.shape
        max_angle = self.degrees if max(rows, cols) >= self.rotate_min_size else 0.0
        angle = rng.uniform(-max_angle, max_angle)
        scale = tuple(rng.uniform(self.scale[0], self.scale[1], size=2))
        shear = rng.uniform(-self.shear, self.shear)
        flip = tuple(np.where(rng.random(2) < self.flip_prob, -1.0, 1.0))
        # Official centre (cols / 2 + 0.5, rows / 2 + 0.5), kept for fidelity.
        center = (cols * 0.5 + 0.5, rows * 0.5 + 0.5)
        matrix = affine_matrix(center, angle, scale, shear, flip)
        sample["fg"] = cv2.warpAffine(fg, matrix, (cols, rows), flags=random_interpolation(rng))
        sample["alpha"] = cv2.warpAffine(
            alpha, matrix, (cols, rows), flags=random_interpolation(rng)
        )
        return sample


class GenTrimap:
    """Generate the ``trimap`` from ``alpha`` (the trimap of the official ``GenMask``).

    The trimap is computed on a ``work_size x work_size`` copy of alpha (random interpolation) and
    resized back with nearest neighbour, so the band width is relative to the image size: the
    definite foreground (alpha ~ 1) and background (alpha ~ 0) are each eroded with an elliptic
    kernel of random size in ``[1, max_kernel)`` px; the rest is unknown (128), see
    :func:`data.trimap.erosion_trimap`.

    Args:
        work_size: side of the square working copy (official: 640).
        max_kernel: exclusive upper bound on kernel sizes in px (official: 30).
    """

    def __init__(self, *, work_size: int = 640, max_kernel: int = 30) -> None:
        self.work_size = work_size
        self.max_kernel = max_kernel

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        height, width = sample["alpha"].shape
        side = self.work_size
        alpha = _resize(sample["alpha"], side, side, random_interpolation(rng))
        fg_kernel = int(rng.integers(1, self.max_kernel))
        bg_kernel = int(rng.integers(1, self.max_kernel))
        trimap = erosion_trimap(alpha, fg_kernel, bg_kernel)
        sample["trimap"] = _resize(trimap, width, height, cv2.INTER_NEAREST)
        return sample


class RandomCrop:
    """Crop ``size x size`` around a random unknown pixel (official ``RandomCrop``).

    ``bg`` is first resized to the foreground. An image whose shorter side is not larger than
    ``size`` is upscaled by ``1.1 * size / shorter side``. The top-left corner is drawn among the
    unknown trimap pixels of a 1/4 grid restricted so that the chosen pixel ends up at the crop
    centre; with fewer than ``min_unknown`` candidates it is drawn uniformly. A trimap without any
    unknown pixel is resized whole to ``size x size`` instead of cropped.

    Args:
        size: crop side in pixels (official: 512).
        min_unknown: fewest unknown grid cells needed to centre the crop on one (official: 10).
    """

    # Subsampling factor of the grid on which unknown pixels are searched (official: 4).
    GRID = 4
    # Upscale factor applied to size / shorter side when the image is too small (official: 1.1).
    UPSCALE_MARGIN = 1.1

    def __init__(self, size: int = 512, *, min_unknown: int = 10) -> None:
        self.size = size
        self.min_unknown = min_unknown

    def _upscale(self, sample: Sample, rng: np.random.Generator) -> None:
        height, width = sample["trimap"].shape
        ratio = self.UPSCALE_MARGIN * self.size / min(height, width)
        while height <= self.size or width <= self.size:
            new_w, new_h = int(width * ratio), int(height * ratio)
            for key in ("fg", "alpha", "bg"):
                sample[key] = _resize(sample[key], new_w, new_h, random_interpolation(rng))
            sample["trimap"] = _resize(sample["trimap"], new_w, new_h, cv2.INTER_NEAREST)
            height, width = sample["trimap"].shape

    def _top_left(self, trimap: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        height, width = trimap.shape
        g, margin = self.GRID, self.size // 2
        grid = _resize(trimap, width // g, height // g, cv2.INTER_NEAREST)
        # Cell (i, j) of this window is pixel (g * i + margin, g * j + margin): a crop whose
        # corner is (g * i, g * j) has that pixel at its centre.
        window = grid[margin // g : (height - margin) // g, margin // g : (width - margin) // g]
        unknown = np.argwhere(window == TRIMAP_UNKNOWN)  # [K, 2] (row, col)
        if len(unknown) < self.min_unknown:
            return (
                int(rng.integers(0, height - self.size + 1)),
                int(rng.integers(0, width - self.size + 1)),
            )
        row, col = unknown[rng.integers(len(unknown))]
        return int(row) * g, int(col) * g

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        height, width = sample["trimap"].shape
        sample["bg"] = _resize(sample["bg"], width, height, random_interpolation(rng))
        if min(height, width) <= self.size:
            self._upscale(sample, rng)
        keys = ("fg", "alpha", "bg", "trimap")
        if not np.any(sample["trimap"] == TRIMAP_UNKNOWN):
            logger.warning(
                "%s has no unknown pixel; resized to %d px instead of cropped",
                sample.get("image_name", "sample"),
                self.size,
            )
            for key in keys:
                nearest = key == "trimap"
                interpolation = cv2.INTER_NEAREST if nearest else random_interpolation(rng)
                sample[key] = _resize(sample[key], self.size, self.size, interpolation)
            return sample
        top, left = self._top_left(sample["trimap"], rng)
        for key in keys:
            sample[key] = sample[key][top : top + self.size, left : left + self.size]
        return sample


class RandomJitter:
    """Random hue, saturation and value shift of ``fg`` (official ``RandomJitter``).

    Hue (OpenCV float HSV, degrees in [0, 360)) shifts by an integer in
    ``[-max_hue_shift, max_hue_shift)``. Saturation and value shift by
    ``u * (1.1 - m) / 5 - (1.1 - m) / 10`` with ``u ~ U[0, 1)`` and ``m`` their mean over
    ``alpha > 0``, then reflect into [0, 1]. Skipped when no pixel has ``alpha > 0``.

    Args:
        max_hue_shift: bound of the hue shift in degrees (official: 40).
    """

    # Saturation/value jitter: spread = SPREAD_BASE - mean, shift in spread * [-1/10, 1/10).
    SPREAD_BASE = 1.1
    SPREAD_DIVISOR = 5.0
    FULL_TURN = 360.0  # degrees

    def __init__(self, *, max_hue_shift: int = 40) -> None:
        self.max_hue_shift = max_hue_shift

    def _shift(
        self, values: np.ndarray, region: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        spread = self.SPREAD_BASE - values[region].mean()
        shift = rng.random() * spread / self.SPREAD_DIVISOR - spread / (2 * self.SPREAD_DIVISOR)
        values = np.abs(values + shift)
        return np.where(values > 1, 2 - values, values)  # reflect at 1

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        region = sample["alpha"] > 0
        if not np.any(region):
            return sample
        hsv = cv2.cvtColor(sample["fg"].astype(np.float32) / UINT8_MAX, cv2.COLOR_RGB2HSV)
        hue_shift = rng.integers(-self.max_hue_shift, self.max_hue_shift)
        hsv[:, :, 0] = np.remainder(hsv[:, :, 0] + hue_shift, self.FULL_TURN)
        hsv[:, :, 1] = self._shift(hsv[:, :, 1], region, rng)
        hsv[:, :, 2] = self._shift(hsv[:, :, 2], region, rng)
        sample["fg"] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * UINT8_MAX
        return sample


class Composite:
    """Clip ``fg``, ``bg``, ``alpha`` to their ranges and form ``image = fg * a + bg * (1 - a)``."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        alpha = np.clip(sample["alpha"], 0.0, 1.0)
        fg = np.clip(sample["fg"].astype(np.float32), 0.0, UINT8_MAX)
        bg = np.clip(sample["bg"].astype(np.float32), 0.0, UINT8_MAX)
        a = alpha[:, :, None]
        sample.update(fg=fg, bg=bg, alpha=alpha, image=fg * a + bg * (1 - a))
        return sample


def _chw(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` in 0..255 -> ``[3, H, W]`` float32 in 0..1."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)  # [H, W, 3] -> [3, H, W]
    return torch.from_numpy(chw / UINT8_MAX)


class ToTensor:
    """Convert the pipeline arrays to tensors (official ``ToTensor``, phase ``train``).

    Output: ``image``, ``fg``, ``bg`` ``[3, H, W]`` float32 in [0, 1] (RGB); ``alpha``
    ``[1, H, W]`` float32 in [0, 1]; ``trimap`` ``[1, H, W]`` float32 in {0, 0.5, 1}, quantized
    with the official thresholds (:func:`data.trimap.quantize_trimap`).
    """

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for key in ("image", "fg", "bg"):
            sample[key] = _chw(sample[key])
        sample["alpha"] = torch.from_numpy(np.clip(sample["alpha"], 0, 1).astype(np.float32)[None])
        sample["trimap"] = torch.from_numpy(quantize_trimap(sample["trimap"])[None])
        return sample


def train_transforms(crop_size: int = 512) -> Compose:
    """The official training pipeline after foreground loading, with its parameters.

    Args:
        crop_size: side of the training crop in pixels (official: 512).

    Returns:
        ``RandomAffine -> GenTrimap -> RandomCrop -> RandomJitter -> Composite -> ToTensor``.
    """
    return Compose(
        [
            RandomAffine(degrees=30.0, scale=(0.8, 1.25), shear=10.0, flip_prob=0.5),
            GenTrimap(),
            RandomCrop(crop_size),
            RandomJitter(),
            Composite(),
            ToTensor(),
        ]
    )
