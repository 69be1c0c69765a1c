"""What a video run writes for each frame of a clip, in ``OUT/<clip>/``: the alpha PNG
``pha/<frame>.png`` (8-bit as the image outputs, or 16-bit) and, on request, the foreground
colours ``fgr/``, the RGBA cutout ``rgba/``, the composite ``com/`` (over a colour, an image or a
video's frames) and the trimap used ``trimap/``; each file written atomically, the alpha PNG
last, so a frame whose alpha PNG exists and decodes is complete.

Foreground colours are estimated with the written alpha (its PNG levels), so a resumed run,
which reads earlier frames' alpha back for the videos, gives the same colours.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data.image_io import is_complete_image, read_map_levels, read_rgb_levels, write_image
from predictor.outputs import alpha_to_uint8
from predictor.video.io import ClipSource
from utils.levels import UINT8_MAX, UINT16_MAX, UINT16_PER_UINT8

__all__ = ["Background", "ClipOutputs", "composite_over", "to_uint8"]

PHA_DIR, FGR_DIR, RGBA_DIR, COM_DIR, TRIMAP_DIR = "pha", "fgr", "rgba", "com", "trimap"
SIXTEEN_BITS = 16


def to_uint8(levels: np.ndarray) -> np.ndarray:
    """Alpha levels (uint8, or uint16 rounded to 8 bits) as uint8."""
    if levels.dtype == np.uint8:
        return levels
    return np.round(levels.astype(np.float32) / UINT16_PER_UINT8).astype(np.uint8)


def composite_over(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The foreground over a background.

    Args:
        foreground: ``[H, W, 3]`` uint8 RGB colours.
        alpha: ``[H, W]`` uint8 levels.
        background: ``[H, W, 3]`` float32 RGB in [0, 1] (or broadcastable).

    Returns:
        ``[H, W, 3]`` uint8 RGB.
    """
    weight = alpha[:, :, None].astype(np.float32) / UINT8_MAX
    mixed = foreground.astype(np.float32) / UINT8_MAX * weight + background * (1 - weight)
    return np.round(mixed * UINT8_MAX).astype(np.uint8)


class Background:
    """The composite's background, frame by frame: a colour, an image (resized to the frames) or
    a clip's frames (resized, the clip restarted when it runs out).

    Args:
        value: ``[3]`` uint8 RGB colour, an image path, or a :class:`ClipSource`.
        shape: the frames' ``(H, W)``.
    """

    def __init__(self, value: np.ndarray | Path | ClipSource, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.clip = value if isinstance(value, ClipSource) else None
        self._frames: Iterator | None = None
        self._still = None
        if isinstance(value, Path):
            self._still = self._fit(read_rgb_levels(value))
        elif self.clip is None:
            colour = np.asarray(value, np.float32) / UINT8_MAX
            self._still = np.broadcast_to(colour, (*shape, 3))

    def _fit(self, image: np.ndarray) -> np.ndarray:
        scale = float(np.iinfo(image.dtype).max)
        resized = cv2.resize(image, self.shape[::-1], interpolation=cv2.INTER_AREA)
        return resized.astype(np.float32) / scale

    def next(self) -> np.ndarray:
        """The next frame's background, ``[H, W, 3]`` float32 RGB in [0, 1]."""
        if self._still is not None:
            return self._still
        frame = next(self._frames, None) if self._frames is not None else None
        if frame is None:
            self._frames = self.clip.frames()
            frame = next(self._frames)
        return self._fit(frame.image)


@dataclass
class ClipOutputs:
    """The per-frame files of one clip."""

    root: Path
    alpha_bits: int = 8
    foreground: bool = False
    rgba: bool = False
    composite: bool = False
    trimap: bool = False
    round_alpha: bool = False

    def paths(self, name: str) -> list[Path]:
        """Every file frame ``name`` gets; the alpha PNG last."""
        extras = [
            (self.foreground, FGR_DIR),
            (self.rgba, RGBA_DIR),
            (self.composite, COM_DIR),
            (self.trimap, TRIMAP_DIR),
        ]
        paths = [self.root / folder / f"{name}.png" for on, folder in extras if on]
        return [*paths, self.root / PHA_DIR / f"{name}.png"]

    @property
    def folders(self) -> list[Path]:
        return sorted({path.parent for path in self.paths("x")})

    def complete(self, name: str) -> bool:
        """Whether every file of frame ``name`` is whole (the alpha PNG also decodes)."""
        *extras, alpha = self.paths(name)
        return all(is_complete_image(p) for p in extras) and is_complete_image(alpha, decode=True)

    def levels(self, alpha: np.ndarray) -> np.ndarray:
        """Float alpha ``[H, W]`` as the PNG's levels: 8-bit as the image outputs
        (:func:`alpha_to_uint8`), 16-bit rounded."""
        if self.alpha_bits == SIXTEEN_BITS:
            return np.round(np.clip(alpha, 0, 1) * UINT16_MAX).astype(np.uint16)
        return alpha_to_uint8(alpha, rounding=self.round_alpha)

    def read_levels(self, name: str) -> np.ndarray:
        """The written alpha levels of frame ``name``."""
        return read_map_levels(self.root / PHA_DIR / f"{name}.png")

    def write(
        self,
        name: str,
        levels: np.ndarray,
        trimap: np.ndarray,
        foreground: np.ndarray | None,
        composite: np.ndarray | None,
    ) -> None:
        """Write the files of one frame (each atomically; the alpha PNG last).

        Args:
            name: the frame's name.
            levels: ``[H, W]`` alpha levels (:meth:`levels`).
            trimap: ``[H, W]`` uint8, the trimap used.
            foreground: ``[H, W, 3]`` uint8 RGB colours, when an output needs them.
            composite: ``[H, W, 3]`` uint8 RGB, with ``composite``.

        Raises:
            OSError: a file cannot be encoded or written (names the file).
        """
        if self.foreground:
            write_image(self.root / FGR_DIR / f"{name}.png", foreground[:, :, ::-1])
        if self.rgba:
            bgra = np.dstack([foreground[:, :, ::-1], to_uint8(levels)])
            write_image(self.root / RGBA_DIR / f"{name}.png", bgra)
        if self.composite:
            write_image(self.root / COM_DIR / f"{name}.png", composite[:, :, ::-1])
        if self.trimap:
            write_image(self.root / TRIMAP_DIR / f"{name}.png", trimap)
        write_image(self.root / PHA_DIR / f"{name}.png", levels)
