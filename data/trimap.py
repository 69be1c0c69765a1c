"""Trimaps: generated from an alpha matte by erosion, and quantized for the network.

An 8-bit trimap (a file, or the training pipeline before ``ToTensor``) holds 0 (background), 128
(unknown) and 255 (foreground); the network takes {0, 0.5, 1}.

References: GCA-Matting / ViTMatte ``GenMask`` (trimap by erosion) and ``ToTensor`` (the 85 / 170
thresholds of training).
"""

import cv2
import numpy as np

__all__ = [
    "TRIMAP_BG",
    "TRIMAP_FG",
    "TRIMAP_UNKNOWN",
    "erosion_trimap",
    "quantize_trimap",
]

# 8-bit trimap levels.
TRIMAP_BG, TRIMAP_UNKNOWN, TRIMAP_FG = 0, 128, 255
# Definite foreground: (alpha + DEFINITE_EPS) truncates to 1; definite background:
# (1 - alpha + DEFINITE_EPS) does, computed in alpha's precision (official `GenMask`, 1e-5).
DEFINITE_EPS = 1e-5
# Official quantization of 8-bit trimaps for training: below 85 background, from 170 foreground,
# unknown in between.
TRIMAP_BG_BELOW = 85
TRIMAP_FG_FROM = 170
# Trimap values the network takes.
BACKGROUND, UNKNOWN, FOREGROUND = 0.0, 0.5, 1.0


def _eroded_definite(values: np.ndarray, kernel_size: int) -> np.ndarray:
    """Where ``(values + DEFINITE_EPS)`` truncates to 1 (the official
    ``.astype(int).astype(np.uint8)`` mask, in ``values``' precision), eroded by an elliptic
    ``kernel_size x kernel_size`` kernel (1: unchanged)."""
    mask = (values + DEFINITE_EPS).astype(int).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    return cv2.erode(mask, kernel) == 1


def erosion_trimap(alpha: np.ndarray, fg_kernel: int, bg_kernel: int) -> np.ndarray:
    """Trimap of an alpha matte: its definite foreground and background, each eroded by an
    elliptic kernel, are 255 and 0; the rest (the band around every fractional alpha) is 128.

    Definite foreground is where ``alpha + 1e-5`` truncates to 1, definite background where
    ``1 - alpha + 1e-5`` does: the official expressions, evaluated in ``alpha``'s precision
    (float32 in training, where they differ from ``alpha <= 1e-5`` just above 1e-5).

    Args:
        alpha: ``[H, W]`` float alpha in [0, 1] (slight overshoot from resampling allowed).
        fg_kernel: side in px of the kernel that erodes the definite foreground.
        bg_kernel: side in px of the kernel that erodes the definite background.

    Returns:
        ``[H, W]`` uint8 trimap in {0, 128, 255}.
    """
    trimap = np.full(alpha.shape, TRIMAP_UNKNOWN, np.uint8)
    trimap[_eroded_definite(alpha, fg_kernel)] = TRIMAP_FG
    trimap[_eroded_definite(1 - alpha, bg_kernel)] = TRIMAP_BG
    return trimap


def quantize_trimap(trimap: np.ndarray) -> np.ndarray:
    """8-bit trimap levels -> the network's {0, 0.5, 1} with the official training thresholds.

    Args:
        trimap: ``[H, W]`` array on the 0..255 scale.

    Returns:
        ``[H, W]`` float32: 0 below ``TRIMAP_BG_BELOW``, 1 from ``TRIMAP_FG_FROM``, else 0.5.
    """
    out = np.full(trimap.shape, UNKNOWN, np.float32)
    out[trimap < TRIMAP_BG_BELOW] = BACKGROUND
    out[trimap >= TRIMAP_FG_FROM] = FOREGROUND
    return out
