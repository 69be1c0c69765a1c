"""Pictures of the routing: which tokens each routed block sent to global attention, and how sure
its router was (the router's probability of global attention as a heat map)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

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


def _panel(image: np.ndarray, keep: np.ndarray, patch: int, size: tuple[int, int]) -> np.ndarray:
    """One block's overlay, ``[h, w, 3]`` uint8 RGB."""
    H, W = image.shape[:2]
    # token grid -> pixel mask (nearest), cropped to the unpadded image
    mask = np.kron(keep.astype(np.float32), np.ones((patch, patch), np.float32))[:H, :W]
    mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)[..., None]
    base = cv2.resize(image, size, interpolation=cv2.INTER_AREA) * 255.0
    routed = (1 - TINT) * base + TINT * GLOBAL_COLOUR
    return (mask * routed + (1 - mask) * LTRM_DIM * base).clip(0, 255).astype(np.uint8)


def _probability_panel(
    image: np.ndarray, probability: np.ndarray, patch: int, size: tuple[int, int]
) -> np.ndarray:
    """One block's router probability of global attention over the image, ``[h, w, 3]`` RGB."""
    H, W = image.shape[:2]
    heat = np.kron(probability.astype(np.float32), np.ones((patch, patch), np.float32))[:H, :W]
    heat = cv2.resize(heat, size, interpolation=cv2.INTER_NEAREST)
    heat = cv2.applyColorMap((heat.clip(0, 1) * 255).astype(np.uint8), PROBABILITY_COLORMAP)
    base = cv2.resize(image, size, interpolation=cv2.INTER_AREA) * 255.0
    heat_rgb = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    blended = PROBABILITY_BLEND * heat_rgb + (1 - PROBABILITY_BLEND) * base
    return blended.clip(0, 255).astype(np.uint8)


def _titled(panel: np.ndarray, caption: str) -> np.ndarray:
    """``panel`` under a white band with ``caption``."""
    title = np.full((TITLE_HEIGHT, panel.shape[1], 3), 255, np.uint8)
    origin = (4, TITLE_HEIGHT - 9)
    cv2.putText(title, caption, origin, cv2.FONT_HERSHEY_SIMPLEX, TEXT_SCALE, (0, 0, 0), 1)
    return np.concatenate([title, panel], axis=0)


def _row(panels: list[np.ndarray]) -> np.ndarray:
    """Panels side by side with white gaps."""
    gap = np.full((panels[0].shape[0], GAP, 3), 255, np.uint8)
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
        image: ``[H, W, 3]`` RGB float in [0, 1].
        keeps: per routed block, the ``[h, w]`` 0/1 decisions (1 = global attention) on the
            padded token grid (``h * patch >= H``).
        block_indexes: backbone block index of each map, for the captions.
        probabilities: optional, per routed block, the router's ``[h, w]`` probability of global
            attention; drawn as a second row of heat maps.
        patch: token size in pixels.

    Returns:
        ``[height, width, 3]`` uint8 BGR image, ready for ``cv2.imwrite``. Top row: global-
        attention tokens tinted orange, LTRM tokens dimmed. Bottom row (with ``probabilities``):
        p(global) from blue (0) to red (1).
    """
    H, W = image.shape[:2]
    scale = PANEL_MAX_SIDE / max(H, W)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))  # cv2 takes (width, height)
    decisions = [
        _titled(_panel(image, keep, patch, size), f"block {index}: {100 * keep.mean():.1f}% global")
        for keep, index in zip(keeps, block_indexes, strict=True)
    ]
    rows = [_row(decisions)]
    if probabilities is not None:
        heat_maps = [
            _titled(
                _probability_panel(image, prob, patch, size),
                f"block {index}: p(global) max {prob.max():.2f}",
            )
            for prob, index in zip(probabilities, block_indexes, strict=True)
        ]
        rows += [np.full((GAP, rows[0].shape[1], 3), 255, np.uint8), _row(heat_maps)]
    return cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR)
