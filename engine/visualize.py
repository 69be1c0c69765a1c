"""Pictures of the routing decisions: which tokens each routed block sent to global attention."""

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


def _panel(image: np.ndarray, keep: np.ndarray, patch: int, size: tuple[int, int]) -> np.ndarray:
    """One block's overlay, ``[h, w, 3]`` uint8 RGB."""
    H, W = image.shape[:2]
    # token grid -> pixel mask (nearest), cropped to the unpadded image
    mask = np.kron(keep.astype(np.float32), np.ones((patch, patch), np.float32))[:H, :W]
    mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)[..., None]
    base = cv2.resize(image, size, interpolation=cv2.INTER_AREA) * 255.0
    routed = (1 - TINT) * base + TINT * GLOBAL_COLOUR
    return (mask * routed + (1 - mask) * LTRM_DIM * base).clip(0, 255).astype(np.uint8)


def routing_figure(
    image: np.ndarray,
    keeps: Sequence[np.ndarray],
    block_indexes: Sequence[int],
    patch: int = 16,
) -> np.ndarray:
    """Side-by-side panels, one per routed block, of the tokens routed to global attention.

    Args:
        image: ``[H, W, 3]`` RGB float in [0, 1].
        keeps: per routed block, the ``[h, w]`` 0/1 decisions (1 = global attention) on the
            padded token grid (``h * patch >= H``).
        block_indexes: backbone block index of each map, for the captions.
        patch: token size in pixels.

    Returns:
        ``[height, width, 3]`` uint8 BGR image, ready for ``cv2.imwrite``. Global-attention
        tokens are tinted orange; LTRM tokens are dimmed.
    """
    H, W = image.shape[:2]
    scale = PANEL_MAX_SIDE / max(H, W)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))  # cv2 takes (width, height)
    panels = []
    for keep, index in zip(keeps, block_indexes, strict=True):
        title = np.full((TITLE_HEIGHT, size[0], 3), 255, np.uint8)
        caption = f"block {index}: {100 * keep.mean():.1f}% global"
        cv2.putText(
            title,
            caption,
            (4, TITLE_HEIGHT - 9),
            cv2.FONT_HERSHEY_SIMPLEX,
            TEXT_SCALE,
            (0, 0, 0),
            1,
        )
        panels.append(np.concatenate([title, _panel(image, keep, patch, size)], axis=0))
        panels.append(np.full((size[1] + TITLE_HEIGHT, GAP, 3), 255, np.uint8))
    figure = np.concatenate(panels[:-1], axis=1)
    return cv2.cvtColor(figure, cv2.COLOR_RGB2BGR)
