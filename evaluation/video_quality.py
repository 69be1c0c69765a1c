"""Measurements of the video path on synthetic clips with ground truth
(:mod:`data.synthetic_clips`), for ``tools/video_benchmark.py`` and the tests:

- :func:`propagation_recall`: how much of each frame's fractional ground truth (0 < alpha < 1)
  lies inside the unknown band of the trimap propagated from the first frame's mask, by the
  flow propagator and by a plain warp (the previous frame's mask warped by the backward flow,
  thresholded, banded), and how large the bands are;
- :func:`temporal_quality`: dtSSD and the frame metrics of ``--temporal off`` and ``flow`` runs
  of the pipeline (:func:`evaluation.clips.evaluate_clips`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.synthetic_clips import MASK_THRESHOLD, ClipMotion, iter_clip, write_clip
from data.trimap import TRIMAP_UNKNOWN, trimap_from_mask
from evaluation.clips import evaluate_clips, match_clips, mean_over_clips
from predictor.matting import ImagePredictor
from predictor.video.flow import FlowEstimator, to_gray, warp
from predictor.video.frames import ClipOutputs
from predictor.video.guidance import ClipGuidance
from predictor.video.io import open_clip
from predictor.video.pipeline import VideoSettings, matte_clip
from predictor.video.propagation import FlowPropagator
from utils.levels import UINT8_MAX

__all__ = ["BandStats", "propagation_recall", "temporal_quality"]

# Fractional ground truth: 8-bit levels strictly between 0 and 255.
_HALF_LEVEL = 0.5 / UINT8_MAX


@dataclass(frozen=True)
class BandStats:
    """Per-frame recall of the fractional ground truth in the unknown band, and band share.

    Attributes:
        recall: per frame, the share of fractional ground-truth pixels inside the band.
        band: per frame, the share of the frame's pixels in the band.
    """

    recall: list[float]
    band: list[float]


def _stats(trimap: np.ndarray, alpha: np.ndarray, stats: BandStats) -> None:
    fractional = (alpha > _HALF_LEVEL) & (alpha < 1 - _HALF_LEVEL)
    unknown = trimap == TRIMAP_UNKNOWN
    stats.recall.append(float(unknown[fractional].mean()) if fractional.any() else 1.0)
    stats.band.append(float(unknown.mean()))


def propagation_recall(
    seed: int,
    size: tuple[int, int],
    num_frames: int,
    motion: ClipMotion,
    unknown_width: float | str,
) -> dict[str, BandStats]:
    """Band statistics of the first frame's mask carried over a synthetic clip.

    Returns:
        ``{"flow": ..., "plain warp": ..., "true mask": ...}``; the last bands each frame's own
        thresholded ground truth (what a perfect propagation of the mask would give).
    """
    results = {name: BandStats([], []) for name in ("flow", "plain warp", "true mask")}
    estimator, propagator = FlowEstimator(), FlowPropagator(unknown_width)
    previous_gray = warped = None
    for index, frame in enumerate(iter_clip(seed, size, num_frames, motion)):
        truth = np.round(frame.alpha * UINT8_MAX) / UINT8_MAX
        gray = to_gray(frame.image)
        true_mask = frame.alpha > MASK_THRESHOLD
        _stats(trimap_from_mask(true_mask, unknown_width), truth, results["true mask"])
        if previous_gray is None:
            trimap = trimap_from_mask(true_mask, unknown_width)
            propagator.anchor(index, frame.image, trimap, true_mask)
            warped = true_mask.astype(np.float32)
            trimaps = {"flow": trimap, "plain warp": trimap}
        else:
            flow = estimator.pair(previous_gray, gray)
            warped = (warp(warped, flow.backward) > MASK_THRESHOLD).astype(np.float32)
            trimaps = {
                "flow": propagator.propagate(index, frame.image, flow),
                "plain warp": trimap_from_mask(warped > MASK_THRESHOLD, unknown_width),
            }
        for name, trimap in trimaps.items():
            _stats(trimap, truth, results[name])
        previous_gray = gray
    return results


def temporal_quality(
    predictor: ImagePredictor,
    seeds: list[int],
    size: tuple[int, int],
    num_frames: int,
    motion: ClipMotion,
    strength: float,
) -> dict[str, dict[str, float]]:
    """Mean over synthetic clips (per-frame erosion trimaps as guidance) of SAD, MSE, Grad,
    Conn (unknown band) and dtSSD, per temporal mode.

    Returns:
        ``{"off": {...}, "flow": {...}}``.
    """
    means = {}
    with tempfile.TemporaryDirectory(prefix="mematte-video-quality-") as tmp:
        root = Path(tmp)
        for seed in seeds:
            write_clip(root / "data", f"clip{seed}", seed, size, num_frames, motion)
        for mode in ("off", "flow"):
            settings = VideoSettings(temporal=mode, strength=strength)
            for seed in seeds:
                name = f"clip{seed}"
                guidance = ClipGuidance(root / "data" / "trimap" / name, None, False, None)
                source = open_clip(root / "data" / "com" / name)
                outputs = ClipOutputs(root / mode / name)
                matte_clip(predictor, source, guidance, outputs, settings)
            clips = match_clips(root / mode, root / "data" / "pha", root / "data" / "trimap")
            results, failures = evaluate_clips(clips, "unknown")
            if failures:
                raise RuntimeError(f"clips failed: {failures}")
            means[mode] = mean_over_clips(results)
    return means
