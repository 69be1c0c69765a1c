"""Procedural video clips with ground truth, nothing downloaded: one subject of
:func:`data.synthetic.make_foreground` (soft body, hair-like strands, a veil) that moves along a
smooth path, turns and sways (a time-varying deformation that grows towards its outline, so the
strands move against the body), composited over a background of
:func:`data.synthetic.make_background` that pans on its own. Every frame comes with its alpha and
foreground colours.

Frames are made one at a time (:func:`iter_clip`), so a long clip never sits in memory;
:func:`write_clip` writes one in the VideoMatte240K release layout::

    ROOT/com/<clip>/00000.png ...   the composites (the input)
    ROOT/pha/<clip>/00000.png ...   ground-truth alpha (8-bit)
    ROOT/fgr/<clip>/00000.png ...   ground-truth foreground colours
    ROOT/trimap/<clip>/00000.png    trimaps {0, 128, 255} from the alpha by erosion
    ROOT/mask/<clip>.png            the first frame's mask (alpha > 0.5)

The same arguments give the same arrays (and files).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data.clips import frame_name
from data.image_io import write_image
from data.synthetic import BACKGROUND_KINDS, fit_background, make_background, make_foreground
from data.trimap import erosion_trimap
from utils.levels import UINT8_MAX

__all__ = ["ClipFrame", "ClipMotion", "iter_clip", "write_clip"]

# The subject's nominal side, as a share of the frame's shorter side.
SUBJECT_SHARE = 0.55
# The subject's path: an ellipse around the frame centre with these semi-axes (shares of W, H),
# travelled at ClipMotion.subject_speed px per frame.
PATH_AXES = (0.12, 0.08)
# The sway field: horizontal and vertical waves across the subject, this many periods per side.
SWAY_WAVES = 1.5
# The background is this much larger than the frame, so that it can pan without running out.
BACKGROUND_MARGIN = 0.5
# Trimaps of write_clip: the erosion kernel's side, as a share of the frame's shorter side.
TRIMAP_KERNEL_SHARE = 0.04
# First-frame masks: the alpha thresholded at half its range.
MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class ClipMotion:
    """How a clip moves (speeds per frame).

    Attributes:
        subject_speed: speed of the subject's centre along its path, px per frame.
        rotation: the subject's turn, degrees per frame.
        sway: amplitude of its deformation at the outline, px (0: rigid).
        sway_period: frames per period of the sway.
        background_speed: speed of the background pan, px per frame.
    """

    subject_speed: float = 1.0
    rotation: float = 0.2
    sway: float = 3.0
    sway_period: float = 24.0
    background_speed: float = 0.5


@dataclass(frozen=True)
class ClipFrame:
    """One frame of a synthetic clip.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB composite.
        alpha: ``[H, W]`` float32 ground-truth alpha in [0, 1].
        foreground: ``[H, W, 3]`` uint8 RGB foreground colours.
    """

    image: np.ndarray
    alpha: np.ndarray
    foreground: np.ndarray


def _subject(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The subject centred on an ``[H, W]`` canvas: float32 RGB colours and alpha in [0, 1]."""
    fg_bgr, alpha_u8 = make_foreground(rng, int(SUBJECT_SHARE * min(height, width)))
    colours = np.zeros((height, width, 3), np.float32)
    alpha = np.zeros((height, width), np.float32)
    sub_h, sub_w = (min(a, b) for a, b in zip(alpha_u8.shape, (height, width)))
    top, left = (height - sub_h) // 2, (width - sub_w) // 2
    src_top, src_left = (alpha_u8.shape[0] - sub_h) // 2, (alpha_u8.shape[1] - sub_w) // 2
    window = np.s_[src_top : src_top + sub_h, src_left : src_left + sub_w]
    colours[top : top + sub_h, left : left + sub_w] = fg_bgr[window][:, :, ::-1] / UINT8_MAX
    alpha[top : top + sub_h, left : left + sub_w] = alpha_u8[window] / UINT8_MAX
    return colours, alpha


def _subject_maps(
    index: int, motion: ClipMotion, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (float32 ``[H, W]`` x and y) from frame ``index`` to the subject canvas:
    the inverse of the subject's move (path, turn) plus its sway."""
    cx, cy = width / 2, height / 2
    axes = (PATH_AXES[0] * width, PATH_AXES[1] * height)
    # Angle along the elliptic path after index frames at subject_speed (mean radius).
    angle = index * motion.subject_speed / max(math.hypot(*axes) / math.sqrt(2), 1e-6)
    shift = (axes[0] * math.sin(angle), axes[1] * (1 - math.cos(angle)))
    turn = math.radians(index * motion.rotation)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Output pixel -> canvas pixel: undo the shift, then the turn about the canvas centre.
    dx, dy = xs - cx - shift[0], ys - cy - shift[1]
    cos, sin = math.cos(turn), math.sin(turn)
    map_x = cos * dx + sin * dy + cx
    map_y = -sin * dx + cos * dy + cy
    # Sway: waves whose amplitude grows linearly from the centre to the subject's outline.
    radius = SUBJECT_SHARE * min(height, width) / 2
    reach = np.clip(np.hypot(map_x - cx, map_y - cy) / radius, 0, 1.5)
    phase = 2 * math.pi * index / motion.sway_period
    wave = 2 * math.pi * SWAY_WAVES / (2 * radius)
    map_x += motion.sway * reach * np.sin(wave * (map_y - cy) + phase)
    map_y += motion.sway * reach * np.sin(wave * (map_x - cx) + phase / 2)
    return map_x, map_y


def iter_clip(
    seed: int, size: tuple[int, int], num_frames: int, motion: ClipMotion = ClipMotion()
) -> Iterator[ClipFrame]:
    """The frames of a synthetic clip, one at a time.

    Args:
        seed: seed of the subject and background (background kind ``seed % 3``).
        size: ``(H, W)`` of the frames.
        num_frames: frames to make.
        motion: speeds of the subject and the background.

    Yields:
        :class:`ClipFrame` per frame.
    """
    height, width = size
    rng = np.random.default_rng(seed)
    colours, alpha = _subject(rng, height, width)
    margin = int(BACKGROUND_MARGIN * max(height, width))
    bg_bgr = make_background(rng, max(height, width) + margin, kind=seed % BACKGROUND_KINDS)
    background = fit_background(bg_bgr, height + margin, width + margin)[:, :, ::-1]
    background = background.astype(np.float32) / UINT8_MAX
    pan = rng.uniform(0, 2 * math.pi)  # direction of the background's pan
    for index in range(num_frames):
        map_x, map_y = _subject_maps(index, motion, height, width)
        frame_alpha = cv2.remap(alpha, map_x, map_y, cv2.INTER_LINEAR, borderValue=0)
        frame_colours = cv2.remap(colours, map_x, map_y, cv2.INTER_LINEAR, borderValue=0)
        # The pan bounces inside the margin: a triangle wave of the travelled distance.
        travel = index * motion.background_speed % (2 * margin)
        offset = min(travel, 2 * margin - travel)
        shift = np.float32(
            [[1, 0, offset * math.cos(pan) ** 2], [0, 1, offset * math.sin(pan) ** 2]]
        )
        frame_bg = cv2.warpAffine(background, shift, (width, height), flags=cv2.WARP_INVERSE_MAP)
        weight = frame_alpha[:, :, None]
        image = frame_colours * weight + frame_bg * (1 - weight)
        yield ClipFrame(
            image=np.round(np.clip(image, 0, 1) * UINT8_MAX).astype(np.uint8),
            alpha=np.clip(frame_alpha, 0, 1),
            foreground=np.round(np.clip(frame_colours, 0, 1) * UINT8_MAX).astype(np.uint8),
        )


def write_clip(
    root: str | Path,
    name: str,
    seed: int,
    size: tuple[int, int],
    num_frames: int,
    motion: ClipMotion = ClipMotion(),
) -> None:
    """Write a synthetic clip in the layout of the module docstring (8-bit PNGs).

    Args:
        root: the dataset folder (sub-folders created as needed).
        name: the clip's name (its folder under ``com/``, ``pha/``, ``fgr/``, ``trimap/``).
        seed, size, num_frames, motion: see :func:`iter_clip`.
    """
    root = Path(root)
    kernel = int(round(TRIMAP_KERNEL_SHARE * min(size))) | 1  # odd side
    for folder in ("com", "pha", "fgr", "trimap"):
        (root / folder / name).mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(iter_clip(seed, size, num_frames, motion)):
        stem = frame_name(index)
        alpha_u8 = np.round(frame.alpha * UINT8_MAX).astype(np.uint8)
        write_image(root / "com" / name / f"{stem}.png", frame.image[:, :, ::-1])
        write_image(root / "pha" / name / f"{stem}.png", alpha_u8)
        write_image(root / "fgr" / name / f"{stem}.png", frame.foreground[:, :, ::-1])
        trimap = erosion_trimap(alpha_u8 / UINT8_MAX, kernel, kernel)
        write_image(root / "trimap" / name / f"{stem}.png", trimap)
        if index == 0:
            mask = np.where(frame.alpha > MASK_THRESHOLD, 255, 0).astype(np.uint8)
            write_image(root / "mask" / f"{name}.png", mask)
