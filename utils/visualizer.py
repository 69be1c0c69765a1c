"""Pictures of the routing: which tokens each routed block sent to global attention, and how sure
its router was (the router's probability of global attention as a heat map), with a legend.

Any aspect ratio fits: the image is scaled so that its longer side is ``PANEL_MAX_SIDE``, and a
panel narrower than its caption, or a picture narrower than its legend, is widened with white
space, so no text is cut off."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from utils.levels import UINT8_MAX, UINT16_MAX

__all__ = ["routing_figure"]

PANEL_MAX_SIDE = 512  # px; each block's panel is the image scaled to fit this
TITLE_HEIGHT = 28  # px band above each panel for its caption
GAP = 8  # px between panels
GLOBAL_COLOUR = np.array([255, 64, 0], dtype=np.float32)  # RGB tint of globally attended tokens
TINT = 0.55  # blend weight of the tint on global tokens
LTRM_DIM = 0.45  # brightness kept for tokens refined by the LTRM
TEXT_SCALE = 0.6
# Router probability p(global) is drawn with this OpenCV colormap over [0, 1] (blue 0, red 1);
# argmax routing sends a token to global attention when p(global) > 0.5.
PROBABILITY_COLORMAP = cv2.COLORMAP_JET
PROBABILITY_BLEND = 0.6  # weight of the heat map over the image
LEGEND_LINE_HEIGHT = 22  # px per legend line
LEGEND_SWATCH = 14  # px side of a legend colour swatch
LEGEND_MARGIN = 6  # px
LEGEND_TEXT_SCALE = 0.45
LEGEND_BAR_WIDTH = 6 * LEGEND_SWATCH  # px, the colour bar of the probabilities
FONT = cv2.FONT_HERSHEY_SIMPLEX
TITLE_TEXT_X = 4  # px, left margin of a caption
_WHITE = 255
_MAX_LEVEL = {np.dtype(np.uint8): UINT8_MAX, np.dtype(np.uint16): UINT16_MAX}


def _token_map(values: np.ndarray, patch: int, hw: tuple[int, int], size: tuple[int, int]):
    """A token-grid map ``[h, w]`` as a ``size`` (width, height) pixel map (nearest), after
    cropping the padded grid to the image ``hw``."""
    H, W = hw
    pixels = np.kron(values.astype(np.float32), np.ones((patch, patch), np.float32))[:H, :W]
    return cv2.resize(pixels, size, interpolation=cv2.INTER_NEAREST)


def _panel(base: np.ndarray, keep: np.ndarray, patch: int, hw: tuple[int, int]) -> np.ndarray:
    """One block's overlay on ``base`` (the scaled image, float 0..255), ``[h, w, 3]`` RGB."""
    mask = _token_map(keep, patch, hw, base.shape[1::-1])[..., None]
    routed = (1 - TINT) * base + TINT * GLOBAL_COLOUR
    return (mask * routed + (1 - mask) * LTRM_DIM * base).clip(0, 255).astype(np.uint8)


def _probability_panel(
    base: np.ndarray, probability: np.ndarray, patch: int, hw: tuple[int, int]
) -> np.ndarray:
    """One block's router probability of global attention over ``base``, ``[h, w, 3]`` RGB."""
    heat = _token_map(probability, patch, hw, base.shape[1::-1])
    heat = cv2.applyColorMap((heat.clip(0, 1) * 255).astype(np.uint8), PROBABILITY_COLORMAP)
    heat_rgb = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    blended = PROBABILITY_BLEND * heat_rgb + (1 - PROBABILITY_BLEND) * base
    return blended.clip(0, 255).astype(np.uint8)


def _colour_bar(width: int) -> np.ndarray:
    """``[LEGEND_SWATCH, width, 3]`` RGB: the probability colormap from 0 (left) to 1."""
    ramp = np.linspace(0, 255, width).astype(np.uint8)[None].repeat(LEGEND_SWATCH, axis=0)
    return cv2.cvtColor(cv2.applyColorMap(ramp, PROBABILITY_COLORMAP), cv2.COLOR_BGR2RGB)


def _text_width(text: str, scale: float) -> int:
    """Width in px of ``text`` drawn by :func:`cv2.putText` at ``scale`` (thickness 1)."""
    (width, _), _ = cv2.getTextSize(text, FONT, scale, 1)
    return width


def _pad_width(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` widened to ``width`` with white columns on the right."""
    pad = width - image.shape[1]
    return np.pad(image, ((0, 0), (0, pad), (0, 0)), constant_values=_WHITE) if pad > 0 else image


def _legend(probabilities: bool) -> np.ndarray:
    """What the colours and tints mean, ``[h, w, 3]`` RGB on white, as wide as its text."""
    grey = np.full(3, 128.0)
    lines = [
        ((1 - TINT) * grey + TINT * GLOBAL_COLOUR, "token sent to global attention"),
        (LTRM_DIM * grey, "token refined by the LTRM (image dimmed)"),
    ]
    caption = "router p(global): 0 ... 1; argmax routing sends p > 0.5"
    text_x = 2 * LEGEND_MARGIN + LEGEND_SWATCH
    bar_text_x = 2 * LEGEND_MARGIN + LEGEND_BAR_WIDTH
    ends = [text_x + _text_width(text, LEGEND_TEXT_SCALE) for _, text in lines]
    if probabilities:
        ends.append(bar_text_x + _text_width(caption, LEGEND_TEXT_SCALE))
    height = LEGEND_LINE_HEIGHT * (len(lines) + probabilities) + LEGEND_MARGIN
    legend = np.full((height, max(ends) + LEGEND_MARGIN, 3), _WHITE, np.uint8)
    for row, (colour, text) in enumerate(lines):
        top = LEGEND_MARGIN + row * LEGEND_LINE_HEIGHT
        legend[top : top + LEGEND_SWATCH, LEGEND_MARGIN : LEGEND_MARGIN + LEGEND_SWATCH] = colour
        _text(legend, text, (text_x, top + LEGEND_SWATCH - 2))
    if probabilities:
        top = LEGEND_MARGIN + len(lines) * LEGEND_LINE_HEIGHT
        bar = (
            slice(top, top + LEGEND_SWATCH),
            slice(LEGEND_MARGIN, LEGEND_MARGIN + LEGEND_BAR_WIDTH),
        )
        legend[bar] = _colour_bar(LEGEND_BAR_WIDTH)
        _text(legend, caption, (bar_text_x, top + LEGEND_SWATCH - 2))
    return legend


def _text(image: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    cv2.putText(image, text, origin, FONT, LEGEND_TEXT_SCALE, (0, 0, 0), 1)


def _titled(panel: np.ndarray, caption: str) -> np.ndarray:
    """``panel`` under a white band with ``caption``, both widened to the caption's width."""
    width = max(panel.shape[1], 2 * TITLE_TEXT_X + _text_width(caption, TEXT_SCALE))
    title = np.full((TITLE_HEIGHT, width, 3), _WHITE, np.uint8)
    origin = (TITLE_TEXT_X, TITLE_HEIGHT - 9)
    cv2.putText(title, caption, origin, FONT, TEXT_SCALE, (0, 0, 0), 1)
    return np.concatenate([title, _pad_width(panel, width)], axis=0)


def _row(panels: list[np.ndarray]) -> np.ndarray:
    """Panels side by side with white gaps."""
    gap = np.full((panels[0].shape[0], GAP, 3), _WHITE, np.uint8)
    parts = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(parts, axis=1)


def routing_figure(
    image: np.ndarray,
    keeps: Sequence[np.ndarray],
    block_indexes: Sequence[int],
    probabilities: Sequence[np.ndarray] | None = None,
    patch: int = 16,
) -> np.ndarray:
    """Panels, one column per routed block, of the tokens routed to global attention.

    Args:
        image: ``[H, W, 3]`` RGB: uint8, uint16 or float in [0, 1] (scaled down to the panel
            size before anything else, so a 6K image costs no full-size float copy).
        keeps: per routed block, the ``[h, w]`` 0/1 decisions (1 = global attention) on the
            padded token grid (``h * patch >= H``).
        block_indexes: backbone block index of each map, for the captions.
        probabilities: optional, per routed block, the router's ``[h, w]`` probability of global
            attention; drawn as a second row of heat maps.
        patch: token size in pixels.

    Returns:
        ``[height, width, 3]`` uint8 BGR image, ready for ``cv2.imwrite``. Top row: global-
        attention tokens tinted orange, LTRM tokens dimmed. Bottom row (with ``probabilities``):
        p(global) from blue (0) to red (1). Captions name the backbone block index; a legend
        below explains the colours.
    """
    H, W = image.shape[:2]
    scale = PANEL_MAX_SIDE / max(H, W)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))  # cv2 takes (width, height)
    small = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
    base = small.astype(np.float32) * (255.0 / _MAX_LEVEL.get(small.dtype, 1.0))
    decisions = [
        _titled(
            _panel(base, keep, patch, (H, W)), f"block {index}: {100 * keep.mean():.1f}% global"
        )
        for keep, index in zip(keeps, block_indexes, strict=True)
    ]
    rows = [_row(decisions)]
    if probabilities is not None:
        heat_maps = [
            _titled(
                _probability_panel(base, prob, patch, (H, W)),
                f"block {index}: p(global) max {prob.max():.2f}",
            )
            for prob, index in zip(probabilities, block_indexes, strict=True)
        ]
        rows += [np.full((GAP, 1, 3), _WHITE, np.uint8), _row(heat_maps)]
    rows.append(_legend(probabilities is not None))
    width = max(row.shape[1] for row in rows)
    figure = np.concatenate([_pad_width(row, width) for row in rows], axis=0)
    return cv2.cvtColor(figure, cv2.COLOR_RGB2BGR)
