"""dtSSD, the temporal coherence error of a predicted alpha sequence (Erofeev et al. 2015), as
the public VideoMatte240K evaluation computes it.

For frame t >= 1, with alphas in [0, 1] (8-bit PNG levels / 255)::

    dtSSD_t = sqrt(mean_pixels(((P_t - P_{t-1}) - (G_t - G_{t-1}))^2)) * 100

where P is the prediction and G the ground truth, over the whole frame; frame 0 counts as 0,
and a clip's dtSSD is the mean over all its frames (frame 0 included).

References: Erofeev, Gitman, Vatolin, Fedorov and Wang, "Perceptually Motivated Benchmark for
Video Matting" (BMVC 2015); Lin et al., Robust Video Matting (the VideoMatte240K evaluation,
``MetricDTSSD``: the x100 scale and the 0 of the first frame).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DTSSD_SCALE", "dtssd"]

# dtSSD is printed x 100 (VideoMatte240K evaluation).
DTSSD_SCALE = 100.0


def dtssd(
    pred: np.ndarray, pred_previous: np.ndarray, gt: np.ndarray, gt_previous: np.ndarray
) -> float:
    """dtSSD of frame t (t >= 1).

    Args:
        pred, pred_previous: ``[H, W]`` predicted alpha of frames t and t-1, in [0, 1].
        gt, gt_previous: ``[H, W]`` ground-truth alpha of frames t and t-1, in [0, 1].

    Returns:
        ``sqrt(mean(((pred - pred_previous) - (gt - gt_previous)) ** 2)) * 100``.

    Raises:
        ValueError: the four arrays differ in shape.
    """
    arrays = [np.asarray(a, np.float64) for a in (pred, pred_previous, gt, gt_previous)]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"dtSSD of arrays of different shapes: {[a.shape for a in arrays]}")
    pred, pred_previous, gt, gt_previous = arrays
    difference = (pred - pred_previous) - (gt - gt_previous)
    return float(np.sqrt(np.mean(np.square(difference))) * DTSSD_SCALE)
