"""Foreground colours from an image and its alpha matte: blur fusion on an image pyramid.

A matted pixel mixes foreground and background, ``I = alpha F + (1 - alpha) B``; a cutout needs
``F``. Using ``F = I`` leaves the old background in every semi-transparent pixel (the halos of
cutouts). Blur fusion (Forte & Pitie) refines estimates of ``F`` and ``B`` in two local steps:

1. local means of the foreground and the background, weighted by alpha and ``1 - alpha``:
   ``F_mean = box(alpha F) / box(alpha)``, ``B_mean = box((1 - alpha) B) / box(1 - alpha)``;
2. the projection: per pixel, the colours closest to those means that composite to the image,
   the least-squares solution of ``min |F - F_mean|^2 + |B - B_mean|^2`` subject to
   ``alpha F + (1 - alpha) B = I``: ``F = F_mean + alpha r / n``, ``B = B_mean + (1 - alpha) r / n``
   with the residual ``r = I - alpha F_mean - (1 - alpha) B_mean`` and
   ``n = alpha^2 + (1 - alpha)^2``, clipped to [0, 1].

The paper runs both steps twice over the full-resolution image (windows of 90 then 6 px) and
corrects only ``F`` (by ``alpha r``). Here they run coarse to fine over an image pyramid, as the
multi-level foreground estimation of Germer et al. does, so that colours reach across large
semi-transparent regions (glass, veils) that no single window spans. The pyramid halves the image
(area means) down to ``MIN_SIDE`` px; each level starts from the colours of the coarser one,
upsampled bilinearly (the coarsest from ``I``). Levels below half resolution run both steps with
``2 RADIUS + 1`` px windows, ``ITERATIONS`` times (``FINE_ITERATIONS`` times at a quarter of the
resolution, which costs as much as all coarser levels together). At half and at full resolution
the upsampled colours of the coarser level serve as the means and only the projection runs: they
are local means already, and a window step there changes the error little (README, Foreground
colours) while costing more than all coarser levels together.

Windows are boxes clipped at the level's border (means over the pixels inside it). Only pixels
with ``0 < alpha < 1`` change, so the window steps and the full-resolution projection run only
on the ``TILE``-px tiles that hold such pixels (horizontal runs of them merged into one box);
elsewhere ``F = I``: exact where alpha is 1, invisible where it is 0. Besides the result, memory
holds the half-resolution level and its colours (half the result's size together) and a few
tile-sized maps.

References: M. Forte, F. Pitie, "Approximate Fast Foreground Colour Estimation", ICIP 2021
(blur fusion); M. Germer et al., "Fast Multi-Level Foreground Estimation", ICPR 2020 (the
coarse-to-fine pyramid).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from utils.device import resolve_device, to_unit_float
from utils.levels import UINT8_MAX

__all__ = ["estimate_foreground", "foreground_to_uint8"]

# Box windows of 2 * RADIUS + 1 px; blur-fusion steps per level below a quarter of the
# resolution, and at a quarter of the resolution.
RADIUS = 2
ITERATIONS = 16
FINE_ITERATIONS = 3
# The pyramid halves the image until its shorter side is at most MIN_SIDE px (and holds at least
# the half and the quarter resolution levels).
MIN_SIDE = 16
# Added to the local means of alpha and 1 - alpha before dividing by them (as in the paper).
EPS = 1e-5
# Side in px of the tiles that hold fractional alpha.
TILE = 128
# Pixels around the fractional ones whose colours the next finer level reads: the bilinear
# neighbours of its pixels next to fractional ones lie within 1 px of fractional pixels of the
# coarser level. The window steps update them too (their colour of weight 0, e.g. F where alpha is
# 0, from the window means), so that the result does not depend on TILE.
READ_MARGIN = 1
# (rows, columns) of a box: a run of tiles on one tile row.
Box = tuple[slice, slice]


def _window_sums(x: Tensor, radius: int, dim: int) -> Tensor:
    """Sums of ``x`` over ``[i - radius, i + radius]`` clipped to the map along ``dim``."""
    out = x.clone()
    n = x.shape[dim]
    for shift in range(1, min(radius, n - 1) + 1):
        out.narrow(dim, shift, n - shift).add_(x.narrow(dim, 0, n - shift))
        out.narrow(dim, 0, n - shift).add_(x.narrow(dim, shift, n - shift))
    return out


def _window_counts(n: int, radius: int, device: torch.device) -> Tensor:
    """``[n]`` number of positions of each clipped window along one dimension."""
    index = torch.arange(n, device=device)
    return ((index + radius).clamp(max=n - 1) - (index - radius).clamp(min=0) + 1).float()


def _window_sum_2d(maps: Tensor, radius: int) -> Tensor:
    """Sums of ``maps`` ``[C, h, w]`` over ``(2 radius + 1)``-px square windows clipped to the
    map."""
    return _window_sums(_window_sums(maps, radius, dim=-1), radius, dim=1)


def _fractional_boxes(fractional: Tensor, margin: int = 0) -> list[Box]:
    """The boxes that cover the ``TILE``-px tiles of an ``[h, w]`` mask holding a True pixel
    within ``margin`` px (Chebyshev): each run of such tiles on a tile row is one box."""
    h, w = fractional.shape
    # [h, w] -> [tiles_h, tiles_w]: whether a tile holds a fractional pixel (within the margin).
    occupied = F.max_pool2d(
        fractional[None].float(), TILE + 2 * margin, TILE, margin, ceil_mode=True
    )[0].cpu()
    # Run starts and ends along each tile row: where the padded row changes value.
    padded = F.pad(occupied.to(torch.int8), (1, 1))
    edges = (padded[:, 1:] != padded[:, :-1]).nonzero().tolist()
    return [
        (slice(y * TILE, min(h, (y + 1) * TILE)), slice(x0 * TILE, min(w, x1 * TILE)))
        for (y, x0), (_, x1) in zip(edges[::2], edges[1::2])
    ]


class _Projection:
    """The projection step (module docstring) at pixels of alpha ``[1, h, w]``, with what depends
    on alpha only computed once."""

    def __init__(self, alpha: Tensor) -> None:
        self.alpha = alpha
        self.beta = 1 - alpha
        norm = torch.addcmul(alpha * alpha, self.beta, self.beta)
        self.fg_gain, self.bg_gain = alpha / norm, self.beta / norm

    def __call__(self, image: Tensor, colours: Tensor) -> Tensor:
        """Move ``colours`` ``[6, h, w]`` (``F`` then ``B``) in place to composite to ``image``
        ``[3, h, w]``.

        Returns:
            ``colours``, clipped to [0, 1].
        """
        fg, bg = colours.split(3)
        residual = torch.addcmul(image, self.alpha, fg, value=-1)
        residual.addcmul_(self.beta, bg, value=-1)
        fg.addcmul_(self.fg_gain, residual)
        bg.addcmul_(self.bg_gain, residual)
        return colours.clamp_(0, 1)


class _BoxSteps:
    """Blur-fusion steps (module docstring) on one box of a pyramid level, with what depends on
    alpha only computed once.

    The colours of a level are one ``[6, h, w]`` map: ``F`` (RGB) then ``B`` (RGB). A step
    writes every pixel of the box: where alpha is 1 it gives ``F = I`` (up to rounding) and
    where alpha is 0 ``B = I``; the other colour there has weight 0 in every window, so no pixel
    needs to be masked.

    Args:
        box: the box's rows and columns in the level.
        image: the level's ``[3, h, w]``.
        alpha: the level's ``[1, h, w]``.
    """

    def __init__(self, box: Box, image: Tensor, alpha: Tensor) -> None:
        h, w = alpha.shape[-2:]
        rows, cols = box
        # The box grown by RADIUS px (where the level has them): what its window means read.
        self.box = box
        self.crop = (
            slice(max(0, rows.start - RADIUS), min(h, rows.stop + RADIUS)),
            slice(max(0, cols.start - RADIUS), min(w, cols.stop + RADIUS)),
        )
        # The box inside its crop.
        self.inner = (
            slice(rows.start - self.crop[0].start, rows.stop - self.crop[0].start),
            slice(cols.start - self.crop[1].start, cols.stop - self.crop[1].start),
        )
        crop_alpha = alpha[:, *self.crop]
        crop_h, crop_w = crop_alpha.shape[-2:]
        # [6, ch, cw] weights of the colours in the window sums: alpha for F, 1 - alpha for B.
        self.weights = torch.cat([crop_alpha.expand(3, -1, -1), (1 - crop_alpha).expand(3, -1, -1)])
        counts = _window_counts(crop_h, RADIUS, alpha.device)[:, None] * _window_counts(
            crop_w, RADIUS, alpha.device
        )
        alpha_sums = _window_sum_2d(crop_alpha, RADIUS)
        # F_mean = box_sum(alpha F) / (box_sum(alpha) + EPS count), likewise with 1 - alpha.
        scales = torch.cat([alpha_sums, counts - alpha_sums]).add_(EPS * counts).reciprocal_()
        self.scales = scales.repeat_interleave(3, dim=0)[:, *self.inner]
        self.project = _Projection(crop_alpha[:, *self.inner])
        self.image = image[:, *box]

    def __call__(self, colours: Tensor) -> Tensor:
        """One step from the level's current colours ``[6, h, w]``.

        Returns:
            the box's new colours, ``[6, bh, bw]``.
        """
        sums = _window_sum_2d(colours[:, *self.crop] * self.weights, RADIUS)[:, *self.inner]
        return self.project(self.image, sums.mul_(self.scales))


def _refine_level(image: Tensor, alpha: Tensor, colours: Tensor, iterations: int) -> Tensor:
    """Blur-fusion steps on one pyramid level, on the boxes that hold fractional alpha.

    Args:
        image: ``[3, h, w]`` in [0, 1].
        alpha: ``[1, h, w]`` in [0, 1].
        colours: ``[6, h, w]``, the starting ``F`` and ``B`` (updated in place).
        iterations: number of steps.

    Returns:
        ``colours``.
    """
    boxes = _fractional_boxes(_fractional(alpha[0]), READ_MARGIN)
    steps = [_BoxSteps(box, image, alpha) for box in boxes]
    for _ in range(iterations):
        # Every box reads its neighbours' previous colours: update once all boxes are done.
        updates = [(box_steps.box, box_steps(colours)) for box_steps in steps]
        for box, new in updates:
            colours[:, *box] = new
    return colours


def _downsample(x: Tensor) -> Tensor:
    """``[h, w, C]`` (any strides) -> ``[ceil(h / 2), ceil(w / 2), C]`` means of 2 x 2 cells (at
    an odd bottom or right border: means of the cell's pixels). Strided sums: torch's
    ``avg_pool2d`` takes four times as long on these maps."""
    h, w, channels = x.shape
    even_h, even_w = h - h % 2, w - w % 2
    out = x.new_empty((h + 1) // 2, (w + 1) // 2, channels)
    core = out[: even_h // 2, : even_w // 2]
    torch.add(x[0:even_h:2, 0:even_w:2], x[1:even_h:2, 0:even_w:2], out=core)
    core += x[0:even_h:2, 1:even_w:2]
    core += x[1:even_h:2, 1:even_w:2]
    core *= 0.25
    if w % 2:
        out[: even_h // 2, -1] = (x[0:even_h:2, -1] + x[1:even_h:2, -1]) * 0.5
    if h % 2:
        out[-1, : even_w // 2] = (x[-1, 0:even_w:2] + x[-1, 1:even_w:2]) * 0.5
    if h % 2 and w % 2:
        out[-1, -1] = x[-1, -1]
    return out


def _upsample_span(span: slice) -> tuple[slice, int]:
    """The coarse positions a span of fine positions interpolates from (one more on each side,
    clipped below at 0), and the span's offset in their upsampled extent."""
    first = max(0, span.start // 2 - 1)
    return slice(first, -(-span.stop // 2) + 1), span.start - 2 * first


def _upsample(x: Tensor, rows: slice, cols: slice) -> Tensor:
    """``x`` ``[C, hc, wc]`` upsampled twice, bilinearly (coarse pixel k centred at fine pixel
    ``2 k + 0.5``), at fine rows ``rows`` and columns ``cols`` only, from the coarse pixels they
    depend on.

    Returns:
        ``[C, len(rows), len(cols)]``, the same values as that part of the whole upsampled map.
    """
    (coarse_rows, top), (coarse_cols, left) = _upsample_span(rows), _upsample_span(cols)
    fine = F.interpolate(x[None, :, coarse_rows, coarse_cols], scale_factor=2, mode="bilinear")
    return fine[0, :, top : top + rows.stop - rows.start, left : left + cols.stop - cols.start]


def _fractional(alpha: Tensor) -> Tensor:
    return (alpha > 0) & (alpha < 1)


def _pyramid(image: Tensor, alpha: Tensor) -> list[Tensor]:
    """The levels below full resolution, finest first: ``[4, h, w]`` maps of RGB and alpha.

    Args:
        image: ``[H, W, 3]``.
        alpha: ``[H, W]``.
    """
    half = torch.cat([_downsample(image), _downsample(alpha[:, :, None])], dim=2)
    levels = [half, _downsample(half)]
    while min(levels[-1].shape[:2]) > MIN_SIDE:
        levels.append(_downsample(levels[-1]))
    return [level.permute(2, 0, 1).contiguous() for level in levels]  # [h, w, 4] -> [4, h, w]


def _half_resolution_colours(levels: list[Tensor]) -> Tensor:
    """``F`` and ``B`` ``[6, h, w]`` at half resolution from the pyramid ``levels`` (finest
    first): window steps from the coarsest level to a quarter of the resolution, the projection
    at half resolution."""
    colours = None
    for index in range(len(levels) - 1, 0, -1):
        level_image, level_alpha = levels[index].split((3, 1))
        h, w = level_image.shape[-2:]
        if colours is None:
            colours = level_image.repeat(2, 1, 1)  # [3, h, w] -> [6, h, w]: F = B = I
        else:
            colours = _upsample(colours, slice(0, h), slice(0, w))
        torch.where(level_alpha >= 1, level_image, colours[:3], out=colours[:3])
        torch.where(level_alpha <= 0, level_image, colours[3:], out=colours[3:])
        iterations = FINE_ITERATIONS if index == 1 else ITERATIONS
        _refine_level(level_image, level_alpha, colours, iterations)
    half_image, half_alpha = levels[0].split((3, 1))
    h, w = half_image.shape[-2:]
    return _Projection(half_alpha)(half_image, _upsample(colours, slice(0, h), slice(0, w)))


def estimate_foreground(
    image: np.ndarray | Tensor,
    alpha: np.ndarray | Tensor,
    *,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Foreground colours of ``image`` under ``alpha`` (module docstring).

    Args:
        image: ``[H, W, 3]`` RGB, uint8 (0..255), uint16 (0..65535) or float (0..1), numpy or
            torch.
        alpha: ``[H, W]`` alpha, uint8 (0..255) or float (0..1), numpy or torch.
        device: where to compute (``"cpu"``, ``"cuda"``, ``"auto"``).

    Returns:
        ``[H, W, 3]`` float32 RGB in [0, 1]; equal to ``image`` where alpha is 0 or 1.

    Raises:
        ValueError: shapes that are not ``[H, W, 3]`` and ``[H, W]`` of the same size.
    """
    if image.ndim != 3 or image.shape[2] != 3 or tuple(alpha.shape) != tuple(image.shape[:2]):
        raise ValueError(
            f"expected an [H, W, 3] image and an [H, W] alpha, got {tuple(image.shape)} and "
            f"{tuple(alpha.shape)}"
        )
    device = resolve_device(device)
    out = to_unit_float(image, device, copy=True)  # [H, W, 3]: the result starts as the image
    alpha = to_unit_float(alpha, device)
    levels = _pyramid(out, alpha)
    colours = _half_resolution_colours(levels)
    del levels
    fractional = _fractional(alpha)
    for rows, cols in _fractional_boxes(fractional):
        # Projection of the upsampled half-resolution colours; F = I where alpha is 0 or 1.
        box = out[rows, cols]  # [bh, bw, 3]
        upsampled = _upsample(colours, rows, cols)
        fg = _Projection(alpha[None, rows, cols])(box.permute(2, 0, 1), upsampled)[:3]
        torch.where(fractional[rows, cols, None], fg.permute(1, 2, 0), box, out=box)
    return out.cpu().numpy()


def foreground_to_uint8(colours: np.ndarray) -> np.ndarray:
    """Foreground colours ``[H, W, 3]`` in [0, 1] as the 8-bit RGB levels the cutout files hold
    (rounded to the nearest level)."""
    return np.round(colours * UINT8_MAX).astype(np.uint8)
