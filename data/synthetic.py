"""Procedural matting data, nothing downloaded: foregrounds (soft-edged blobs, hair-like
anti-aliased strands and semi-transparent veils over a smooth colour field) with their alphas,
backgrounds (gradients, noise, stripes), composites with known foreground colours, and the
benchmark's large inputs (a subject with a wavy edge and a realistic unknown band).

Every function is seeded: the same arguments give the same arrays.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from utils.levels import UINT8_MAX

__all__ = [
    "DEFAULT_UNKNOWN",
    "fit_background",
    "make_background",
    "make_benchmark_inputs",
    "make_composite",
    "make_foreground",
]

# Image sides are drawn in size * [low, high): foregrounds, backgrounds.
FG_SIDE_RANGE = (0.8, 1.2)


BG_SIDE_RANGE = (1.0, 1.5)


# cv2.polylines/ellipse use fixed-point coordinates with this many fractional bits (sub-pixel).
_SHIFT = 4


_ONE = 1 << _SHIFT


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency colour noise ``[H, W, 3]`` float32 in [0, 1]: a coarse grid, upsampled."""
    grid = rng.random((cells, cells, 3)).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)


def _strand(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float
) -> np.ndarray:
    """Points ``[N, 2]`` (x, y, fixed point) of a wavy hair strand starting at ``start``."""
    steps = max(int(length / 2), 2)
    turns = np.cumsum(rng.normal(0.0, 0.15, steps))  # slowly drifting direction
    angles = heading + turns
    deltas = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [N, 2], 2 px per step
    points = start + np.cumsum(deltas, axis=0)
    return np.round(points * _ONE).astype(np.int32)


def make_foreground(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One procedural foreground.

    Args:
        rng: source of randomness.
        size: nominal side in pixels.

    Returns:
        ``(fg [H, W, 3] uint8 BGR, alpha [H, W] uint8)``.
    """
    height, width = (int(size * rng.uniform(*FG_SIDE_RANGE)) for _ in range(2))
    center = np.array([width / 2, height / 2]) * rng.uniform(0.85, 1.15, 2)
    colour = _smooth_field(rng, height, width, cells=4)

    # Opaque body: a few overlapping ellipses, edges softened by a blur of a few pixels.
    body = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        offset = rng.normal(0.0, 0.08, 2) * (width, height)
        axes = rng.uniform(0.12, 0.25, 2) * (width, height)
        c = tuple(int(v) for v in np.round((center + offset) * _ONE))
        a = tuple(int(v) for v in np.round(axes * _ONE))
        cv2.ellipse(body, c, a, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    sigma = rng.uniform(0.8, 2.5)
    alpha = cv2.GaussianBlur(body.astype(np.float32) / 255, (0, 0), sigma)

    # Semi-transparent veil (glass, smoke): a wide blurred ellipse at partial opacity.
    veil = np.zeros((height, width), np.uint8)
    axes = rng.uniform(0.15, 0.3, 2) * (width, height)
    offset = rng.normal(0.0, 0.2, 2) * (width, height)
    c = tuple(int(v) for v in np.round((center + offset) * _ONE))
    a = tuple(int(v) for v in np.round(axes * _ONE))
    cv2.ellipse(veil, c, a, 0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    veil_alpha = cv2.GaussianBlur(veil.astype(np.float32) / 255, (0, 0), rng.uniform(3, 8))
    alpha = np.maximum(alpha, veil_alpha * rng.uniform(0.25, 0.7))

    # Hair: thin anti-aliased strands leaving the body outwards, with their own colour.
    strands = np.zeros((height, width), np.uint8)
    hair_colour = rng.random(3)
    boundary = np.argwhere(cv2.Canny(body, 50, 150) > 0)[:, ::-1]  # [K, 2] (x, y)
    for _ in range(int(rng.integers(20, 60)) if len(boundary) else 0):
        start = boundary[rng.integers(len(boundary))].astype(np.float64)
        heading = np.arctan2(*(start - center)[::-1]) + rng.normal(0.0, 0.4)
        points = _strand(rng, start, heading, rng.uniform(0.08, 0.3) * size)
        cv2.polylines(strands, [points], False, 255, 1, cv2.LINE_AA, _SHIFT)
    strand_alpha = strands.astype(np.float32) / 255 * rng.uniform(0.6, 1.0)
    colour = colour * (1 - strand_alpha[:, :, None]) + hair_colour * strand_alpha[:, :, None]
    alpha = np.maximum(alpha, strand_alpha)

    fg = np.round(colour * 255).astype(np.uint8)
    return fg, np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8)


def make_background(rng: np.random.Generator, size: int, kind: int) -> np.ndarray:
    """One procedural background ``[H, W, 3]`` uint8 BGR.

    Args:
        rng: source of randomness.
        size: nominal side in pixels.
        kind: 0 gradient, 1 noise, 2 stripes (others wrap around).
    """
    height, width = (int(size * rng.uniform(*BG_SIDE_RANGE)) for _ in range(2))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    # Coordinate along a random direction, normalised to about [0, 1].
    along = (xs * np.cos(angle) + ys * np.sin(angle)) / max(height, width)
    low, high = rng.random(3), rng.random(3)
    if kind % 3 == 0:
        t = np.clip(along - along.min(), 0, 1)[:, :, None]
        image = low * (1 - t) + high * t + _smooth_field(rng, height, width, 3) * 0.2
    elif kind % 3 == 1:
        image = _smooth_field(rng, height, width, cells=int(rng.integers(4, 12)))
        image = image + rng.normal(0.0, 0.08, image.shape)
    else:
        period = rng.uniform(0.03, 0.15)
        t = (np.sin(2 * np.pi * along / period) > 0).astype(np.float32)[:, :, None]
        image = low * (1 - t) + high * t
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def fit_background(bg: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``bg`` to cover ``height x width`` and crop its top-left corner."""
    scale = max(height / bg.shape[0], width / bg.shape[1], 1.0)
    if scale > 1.0:
        new_size = (int(np.ceil(bg.shape[1] * scale)), int(np.ceil(bg.shape[0] * scale)))
        bg = cv2.resize(bg, new_size, interpolation=cv2.INTER_CUBIC)
    return bg[:height, :width]


BACKGROUND_KINDS = 3  # gradient, noise, stripes (make_background's kinds)


def make_composite(seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic composite with known foreground colours.

    Args:
        seed: seed of the foreground and background (background kind ``seed % 3``).
        size: ``(H, W)``.

    Returns:
        ``(image, alpha, fg)``: ``[H, W, 3]`` float32 RGB in [0, 1], ``[H, W]`` float32 alpha,
        ``[H, W, 3]`` float32 RGB foreground colours.
    """
    height, width = size
    rng = np.random.default_rng(seed)
    fg_bgr, alpha_u8 = make_foreground(rng, max(height, width))
    bg_bgr = make_background(rng, max(height, width), kind=seed % BACKGROUND_KINDS)

    def unit_rgb(bgr: np.ndarray) -> np.ndarray:
        resized = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
        return resized[:, :, ::-1].astype(np.float32) / UINT8_MAX  # BGR -> RGB

    fg, bg = unit_rgb(fg_bgr), unit_rgb(bg_bgr)
    alpha = cv2.resize(alpha_u8, (width, height), interpolation=cv2.INTER_AREA)
    alpha = alpha.astype(np.float32) / UINT8_MAX
    image = fg * alpha[:, :, None] + bg * (1 - alpha[:, :, None])
    return image, alpha, fg


# Synthetic trimap: an ellipse with semi-axes 0.35 H x 0.30 W and an unknown ring of this area.
# Synthetic trimap: a foreground ellipse (semi-axes ELLIPSE_AXES of H and W) whose edge is wavy
# (two sine harmonics of the angle), with an unknown band along it of --unknown of the pixels.
ELLIPSE_AXES = (0.35, 0.30)


EDGE_WAVES = ((7, 0.08, 0.0), (23, 0.04, 1.0))  # (frequency, relative amplitude, phase)


DEFAULT_UNKNOWN = 0.10


QUANTILE_STRIDE = 8  # the band width is fitted on every 8th pixel of every 8th row


ROWS_PER_CHUNK = 256  # input generation works on row chunks to keep the idle RSS low


def _edge_distance(rows: Tensor, height: int, width: int) -> Tensor:
    """Signed distance in px (negative inside) of the pixels of ``rows`` to the wavy ellipse,
    measured along the normalised radius: ``[len(rows), W]``."""
    a, b = ELLIPSE_AXES[0] * height, ELLIPSE_AXES[1] * width
    y = ((rows.float() - height / 2) / a)[:, None]
    x = ((torch.arange(width, dtype=torch.float32) - width / 2) / b)[None, :]
    angle = torch.atan2(y, x)
    edge = torch.ones_like(angle)
    for frequency, amplitude, phase in EDGE_WAVES:
        edge += amplitude * torch.sin(frequency * angle + phase)
    return (torch.sqrt(y * y + x * x) - edge) * min(a, b)


def make_benchmark_inputs(
    height: int, width: int, seed: int = 0, unknown: float = DEFAULT_UNKNOWN
) -> dict[str, Tensor]:
    """Seeded image ``[1, 3, H, W]`` in 0..1 and trimap ``[1, 1, H, W]`` in {0, 0.5, 1}.

    The image is smooth ramps plus uniform noise. The trimap is a foreground ellipse with a
    smooth, wavy edge (the subject) and an unknown band of constant width along that edge,
    the width chosen so that the band covers ``unknown`` of the pixels (a thin band, as real
    trimaps have, at the default 10 %).
    """
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, height, width, generator=gen).mul_(0.5)
    ramp_y = torch.linspace(0, 0.25, height).view(height, 1)
    ramp_x = torch.linspace(0, 0.25, width).view(1, width)
    for c in range(3):
        image[0, c].add_(ramp_y if c != 1 else ramp_x).add_(ramp_x if c != 2 else ramp_y)
    sample = _edge_distance(torch.arange(0, height, QUANTILE_STRIDE), height, width)
    band = torch.quantile(sample[:, ::QUANTILE_STRIDE].abs().flatten(), unknown).item()
    trimap = torch.empty(1, 1, height, width)
    for r0 in range(0, height, ROWS_PER_CHUNK):
        distance = _edge_distance(torch.arange(r0, min(height, r0 + ROWS_PER_CHUNK)), height, width)
        rows = trimap[0, 0, r0 : r0 + ROWS_PER_CHUNK]
        rows.copy_((distance < 0).to(rows.dtype))
        rows[distance.abs_() <= band] = 0.5
    return {"image": image, "trimap": trimap}
