"""The error of estimated foreground colours against the true ones: the alpha-weighted mean
absolute colour error over the fractional pixels (where the colours matter for a composite).
"""

from __future__ import annotations

import numpy as np

__all__ = ["foreground_error"]


def foreground_error(estimate: np.ndarray, fg: np.ndarray, alpha: np.ndarray) -> float:
    """Alpha-weighted mean absolute colour error over the pixels with ``0 < alpha < 1``.

    Args:
        estimate, fg: ``[H, W, 3]`` estimated and true foreground colours in [0, 1].
        alpha: ``[H, W]``.

    Returns:
        ``sum(alpha |estimate - fg|) / (3 sum(alpha))`` over the fractional pixels.
    """
    fractional = (alpha > 0) & (alpha < 1)
    weight = alpha[fractional][:, None].astype(np.float64)
    difference = np.abs(estimate[fractional].astype(np.float64) - fg[fractional])
    return float((weight * difference).sum() / (3 * weight.sum()))
