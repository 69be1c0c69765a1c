"""Foreground colours from an image and its alpha matte: blur fusion on an image pyramid.

A matted pixel mixes foreground and background, ``I = alpha F + (1 - alpha) B``; a cutout needs
``F``. Using ``F = I`` leaves the old background in every semi-transparent pixel (the halos of
cutouts). Blur fusion (Forte & Pitie) refines estimates of ``F`` and ``B`` in two local steps:

1. local means of the foreground and the background, weighted by alpha and ``1 - alpha``:
   ``F_mean = box(alpha F) / box(alpha)``, ``B_mean = box((1 - alpha) B) / box(1 - alpha)``;
2. per pixel, the colours closest to those means that composite to the image: the least-squares
   solution of ``min |F - F_mean|^2 + |B - B_mean|^2`` subject to ``alpha F + (1 - alpha) B = I``,
   ``F = F_mean + alpha r / n``, ``B = B_mean + (1 - alpha) r / n`` with the residual
   ``r = I - alpha F_mean - (1 - alpha) B_mean`` and ``n = alpha^2 + (1 - alpha)^2``, clipped to
   [0, 1].

The paper runs this twice over the full-resolution image (windows of 90 then 6 px) and corrects
only ``F`` (by ``alpha r``). Here the steps run coarse to fine over an image pyramid (halving the
size down to ``MIN_SIDE`` px, area means) with ``2 RADIUS + 1`` px windows, ``COARSE_ITERATIONS``
times per level below full resolution and ``FULL_ITERATIONS`` times at full resolution, each
level starting from the upsampled (bilinear) colours of the coarser one, as the multi-level
foreground estimation of Germer et al. does: colours reach across large semi-transparent regions
(glass, veils) that no single window spans. The README (Foreground colours) gives the errors of
both forms on the composites of ``tools/foreground_benchmark.py``.

Windows are boxes clipped at the image border (means over the pixels inside the image). Only
pixels with ``0 < alpha < 1`` change, so every level runs only on the ``TILE``-px tiles that
hold such pixels; elsewhere ``F = I``: exact where alpha is 1, invisible where it is 0. The
full-resolution level runs in row strips with the halo its steps need, so memory stays bounded
on 6K images; window sums add their terms in the same order everywhere, so the result does not
depend on the strip size (up to float rounding: vectorised and scalar loops may round a product
differently, 2e-7).

References: M. Forte, F. Pitie, "Approximate Fast Foreground Colour Estimation", ICIP 2021
(blur fusion); M. Germer et al., "Fast Multi-Level Foreground Estimation", ICPR 2020 (the
coarse-to-fine pyramid).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data.image_io import to_unit_float
from modeling.lean.chunking import map_strips
from utils.device import resolve_device

__all__ = ["estimate_foreground"]

# Box windows of 2 * RADIUS + 1 px; blur-fusion steps per pyramid level below full resolution,
# and at full resolution (where one step costs as much as all coarser levels together).
RADIUS = 2
COARSE_ITERATIONS = 3
FULL_ITERATIONS = 1
# The pyramid halves the image until its shorter side is at most MIN_SIDE px.
MIN_SIDE = 16
# Added to the local means of alpha and 1 - alpha before dividing by them (as in the paper).
EPS = 1e-5
# Side in px of the tiles a level runs on when they hold fractional alpha (even).
TILE = 128
# Pixels per row strip of the full-resolution level (without its halo): 2**21 px hold the
# strip's maps (image, alpha, foreground, background: 10 floats per pixel) in 80 MiB; a 6017 px
# wide image is processed 348 rows at a time.
STRIP_PIXELS = 2**21
# Rows a full-resolution strip needs beyond its own: each step reads RADIUS rows further (even,
# so that strips start on even rows, where the coarser level's pixels start).
_HALO = FULL_ITERATIONS * RADIUS + FULL_ITERATIONS * RADIUS % 2
# (rows, columns) of a tile.
Tile = tuple[slice, slice]


def _window_sums(x: Tensor, radius: int, dim: int) -> Tensor:
    """Sums of ``x`` over ``[i - radius, i + radius]`` clipped to the map along ``dim``, added
    in the same order at every position (so a crop gives the same bits as the whole map)."""
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


def _fractional_tiles(fractional: Tensor) -> list[Tile]:
    """The ``TILE``-px tiles of a ``[1, h, w]`` mask that hold a True pixel."""
    h, w = fractional.shape[-2:]
    # [1, h, w] -> [1, tiles_h, tiles_w]: whether a tile holds a fractional pixel.
    occupied = F.max_pool2d(fractional.float(), TILE, ceil_mode=True)[0]
    return [
        (slice(y * TILE, min(h, (y + 1) * TILE)), slice(x * TILE, min(w, (x + 1) * TILE)))
        for y, x in occupied.nonzero().tolist()
    ]


class _TileSteps:
    """Blur-fusion steps (module docstring) on one tile of a pyramid level, with what depends on
    alpha only computed once.

    The colours of a level are one ``[6, h, w]`` map: ``F`` (RGB) then ``B`` (RGB). A step
    writes every pixel of the tile: where alpha is 1 it gives ``F = I`` (up to rounding) and
    where alpha is 0 ``B = I``; the other colour there has weight 0 in every window, so no pixel
    needs to be masked.

    Args:
        tile: the tile's rows and columns in the level.
        image: the level's ``[3, h, w]``.
        alpha: the level's ``[1, h, w]``.
    """

    def __init__(self, tile: Tile, image: Tensor, alpha: Tensor) -> None:
        h, w = alpha.shape[-2:]
        rows, cols = tile
        # The tile grown by RADIUS px (where the level has them): what its window means read.
        self.tile = tile
        self.crop = (
            slice(max(0, rows.start - RADIUS), min(h, rows.stop + RADIUS)),
            slice(max(0, cols.start - RADIUS), min(w, cols.stop + RADIUS)),
        )
        # The tile inside its crop.
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
        self.alpha = crop_alpha[:, *self.inner]
        self.beta = 1 - self.alpha
        norm = self.alpha * self.alpha + self.beta * self.beta
        self.fg_gain, self.bg_gain = self.alpha / norm, self.beta / norm
        self.image = image[:, *tile]

    def __call__(self, colours: Tensor) -> Tensor:
        """One step from the level's current colours ``[6, h, w]``.

        Returns:
            the tile's new colours, ``[6, th, tw]``.
        """
        sums = _window_sum_2d(colours[:, *self.crop] * self.weights, RADIUS)[:, *self.inner]
        means = sums.mul_(self.scales)
        fg_mean, bg_mean = means.split(3)
        # r = I - alpha F_mean - (1 - alpha) B_mean, then F and B move along it.
        residual = torch.addcmul(self.image, self.alpha, fg_mean, value=-1)
        residual.addcmul_(self.beta, bg_mean, value=-1)
        fg_mean.addcmul_(self.fg_gain, residual)
        bg_mean.addcmul_(self.bg_gain, residual)
        return means.clamp_(0, 1)


def _refine_level(
    image: Tensor, alpha: Tensor, colours: Tensor, tiles: list[Tile], iterations: int
) -> Tensor:
    """Blur-fusion steps on one pyramid level, on the tiles that hold fractional alpha.

    Args:
        image: ``[3, h, w]`` in [0, 1].
        alpha: ``[1, h, w]`` in [0, 1].
        colours: ``[6, h, w]``, the starting ``F`` and ``B`` (updated in place); ``F = I``
            where alpha is 1 and ``B = I`` where alpha is 0.
        tiles: the tiles that hold fractional pixels (:func:`_fractional_tiles`).
        iterations: number of steps.

    Returns:
        ``colours``.
    """
    steps = [_TileSteps(tile, image, alpha) for tile in tiles]
    for _ in range(iterations):
        # Every tile reads its neighbours' previous colours: update once all tiles are done.
        updates = [(tile_steps.tile, tile_steps(colours)) for tile_steps in steps]
        for tile, new in updates:
            colours[:, *tile] = new
    return colours


def _downsample(x: Tensor) -> Tensor:
    """``[C, h, w]`` -> ``[C, ceil(h / 2), ceil(w / 2)]`` means of 2 x 2 cells (at an odd
    bottom or right border: means of the cell's pixels)."""
    channels, h, w = x.shape
    even_h, even_w = h - h % 2, w - w % 2
    out = x.new_empty(channels, (h + 1) // 2, (w + 1) // 2)
    core = out[:, : even_h // 2, : even_w // 2]
    torch.add(x[:, 0:even_h:2, 0:even_w:2], x[:, 1:even_h:2, 0:even_w:2], out=core)
    core += x[:, 0:even_h:2, 1:even_w:2]
    core += x[:, 1:even_h:2, 1:even_w:2]
    core *= 0.25
    if w % 2:
        out[:, : even_h // 2, -1] = (x[:, 0:even_h:2, -1] + x[:, 1:even_h:2, -1]) * 0.5
    if h % 2:
        out[:, -1, : even_w // 2] = (x[:, -1, 0:even_w:2] + x[:, -1, 1:even_w:2]) * 0.5
    if h % 2 and w % 2:
        out[:, -1, -1] = x[:, -1, -1]
    return out


def _upsample_span(span: slice) -> tuple[slice, int]:
    """The coarse positions a span of fine positions interpolates from (one more on each side,
    clipped below at 0), and the span's offset in their upsampled extent."""
    first = max(0, span.start // 2 - 1)
    return slice(first, -(-span.stop // 2) + 1), span.start - 2 * first


def _upsample(x: Tensor, rows: slice, cols: slice) -> Tensor:
    """``x`` ``[C, hc, wc]`` upsampled twice, bilinearly (coarse pixel k centred at fine pixel
    ``2 k + 0.5``), at fine rows ``rows`` and columns ``cols`` only, from the coarse pixels they
    depend on. ``rows.start`` and ``cols.start`` must be even.

    Returns:
        ``[C, len(rows), len(cols)]``, the same values as that part of the whole upsampled map.
    """
    (coarse_rows, top), (coarse_cols, left) = _upsample_span(rows), _upsample_span(cols)
    fine = F.interpolate(x[None, :, coarse_rows, coarse_cols], scale_factor=2, mode="bilinear")
    return fine[0, :, top : top + rows.stop - rows.start, left : left + cols.stop - cols.start]


def _fractional(alpha: Tensor) -> Tensor:
    return (alpha > 0) & (alpha < 1)


def estimate_foreground(
    image: np.ndarray | Tensor,
    alpha: np.ndarray | Tensor,
    *,
    device: str | torch.device = "cpu",
    strip_pixels: int = STRIP_PIXELS,
) -> np.ndarray:
    """Foreground colours of ``image`` under ``alpha`` (module docstring).

    Args:
        image: ``[H, W, 3]`` RGB, uint8 (0..255), uint16 (0..65535) or float (0..1), numpy or
            torch.
        alpha: ``[H, W]`` alpha, uint8 (0..255) or float (0..1), numpy or torch.
        device: where to compute (``"cpu"``, ``"cuda"``, ``"auto"``); of the full resolution,
            only one strip is there at a time.
        strip_pixels: pixels per row strip (memory bound; the result does not depend on it).

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
    H, W = image.shape[:2]
    rows = max(2, strip_pixels // W // 2 * 2)

    def unit_strip(top: int, bottom: int) -> tuple[Tensor, Tensor]:
        """Rows ``[top, bottom)`` as ``[3, h, W]`` RGB and ``[1, h, W]`` alpha floats."""
        rgb = to_unit_float(image[top:bottom], device)
        rgb = rgb.permute(2, 0, 1).contiguous()  # [h, W, 3] -> [3, h, W]
        return rgb, to_unit_float(alpha[top:bottom], device)[None]  # [h, W] -> [1, h, W]

    # The pyramid below full resolution, finest first: [4, h, w] maps of RGB and alpha; its first
    # level is built from strips of even height, so no full-resolution float copy exists.
    pyramid = []
    if min(H, W) > MIN_SIDE:
        strips = (unit_strip(top, top + rows) for top in range(0, H, rows))
        halves = [torch.cat([_downsample(rgb), _downsample(weight)]) for rgb, weight in strips]
        pyramid.append(torch.cat(halves, dim=1))
    while pyramid and min(pyramid[-1].shape[-2:]) > MIN_SIDE:
        pyramid.append(_downsample(pyramid[-1]))
    colours = None  # [6, h, w]: F and B of the last level done
    for level in reversed(pyramid):
        level_image, level_alpha = level.split((3, 1))
        h, w = level.shape[-2:]
        if colours is None:
            colours = level_image.repeat(2, 1, 1)
        else:
            colours = _upsample(colours, slice(0, h), slice(0, w)).contiguous()
        torch.where(level_alpha >= 1, level_image, colours[:3], out=colours[:3])
        torch.where(level_alpha <= 0, level_image, colours[3:], out=colours[3:])
        tiles = _fractional_tiles(_fractional(level_alpha))
        _refine_level(level_image, level_alpha, colours, tiles, COARSE_ITERATIONS)

    def strip(top: int, bottom: int) -> Tensor:
        rgb, weight = unit_strip(top, bottom)
        fractional = _fractional(weight)
        tiles = _fractional_tiles(fractional)
        # Start from I (exact where alpha is 1 or 0) and, at fractional pixels, from the
        # upsampled colours of the coarser level.
        start = rgb.repeat(2, 1, 1)  # [3, h, W] -> [6, h, W]: F and B
        for rows, cols in tiles if colours is not None else ():
            upsampled = _upsample(colours, slice(top + rows.start, top + rows.stop), cols)
            tile = start[:, rows, cols]
            torch.where(fractional[:, rows, cols], upsampled, tile, out=tile)
        fg = _refine_level(rgb, weight, start, tiles, FULL_ITERATIONS)[:3]
        # F = I except at the fractional pixels (where alpha is 0 or 1 the step left I up to
        # rounding, or an invisible colour).
        out = to_unit_float(image[top:bottom], device).clone()  # [h, W, 3]
        for rows, cols in tiles:
            tile = out[rows, cols]
            tile_fg = fg[:, rows, cols].permute(1, 2, 0)  # [3, th, tw] -> [th, tw, 3]
            torch.where(fractional[0, rows, cols, None], tile_fg, tile, out=tile)
        return out

    out = torch.empty(H, W, 3)
    map_strips(strip, H, rows, dim=0, halo=_HALO, out=out)
    return out.numpy()
