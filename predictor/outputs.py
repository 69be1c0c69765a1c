"""What a run writes for each image: the official 8-bit alpha PNG and, on request, the foreground
colours, an RGBA cutout, a composite over a colour or an image, the trimap used and the routing
picture; each file written atomically, the alpha PNG last, so an item whose alpha PNG exists and
decodes is complete. A prompt run also writes the segmenter's mask the trimap was made from.

Folder layout under the output folder ``root``: ``<name>.png`` (alpha), ``foreground/``,
``rgba/``, ``composite/``, ``trimap/``, ``mask/`` (``<name>.png`` each) and ``routing/<name>.jpg``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from data.image_io import is_complete_image, read_rgb_levels, write_image
from utils.levels import UINT8_MAX

__all__ = [
    "COMPOSITE_DIR",
    "FOREGROUND_DIR",
    "MASK_DIR",
    "RGBA_DIR",
    "ROUTING_DIR",
    "TRIMAP_DIR",
    "Outputs",
    "alpha_to_uint8",
    "parse_colour",
]

ROUTING_DIR, FOREGROUND_DIR, RGBA_DIR, COMPOSITE_DIR, TRIMAP_DIR = (
    "routing",
    "foreground",
    "rgba",
    "composite",
    "trimap",
)
MASK_DIR = "mask"  # a segmenter's mask (0/255), beside the trimap made from it
# Colours: ``#rrggbb`` (the ``#`` optional) or a colour picker's ``rgb(r, g, b)`` /
# ``rgba(r, g, b, a)``.
_HEX_COLOUR = re.compile(r"#?([0-9a-fA-F]{6})")
_RGB_COLOUR = re.compile(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+\s*)?\)")


def alpha_to_uint8(alpha: np.ndarray | torch.Tensor, rounding: bool = False) -> np.ndarray:
    """8-bit alpha as the official script writes it: ``floor(alpha * 255)`` (torchvision's
    float-to-PIL conversion truncates), or rounded.

    Args:
        alpha: ``[H, W]`` alpha in [0, 1], known regions already forced (float32).
        rounding: round to the nearest level instead of truncating.

    Returns:
        ``[H, W]`` uint8 array.
    """
    scaled = torch.as_tensor(alpha).float().clamp(0, 1).mul_(UINT8_MAX)
    if rounding:
        scaled.round_()
    return scaled.to(torch.uint8).numpy()


def parse_colour(value: str) -> np.ndarray:
    """A colour, ``#rrggbb`` (or ``rrggbb``), ``rgb(r, g, b)`` or ``rgba(r, g, b, a)``, as ``[3]``
    uint8 RGB (the alpha of ``rgba`` is ignored).

    Raises:
        ValueError: another form.
    """
    value = value.strip()
    if match := _HEX_COLOUR.fullmatch(value):
        return np.frombuffer(bytes.fromhex(match.group(1)), np.uint8).copy()
    if match := _RGB_COLOUR.fullmatch(value):
        levels = [round(float(c)) for c in match.groups()]
        return np.array(levels).clip(0, UINT8_MAX).astype(np.uint8)
    raise ValueError(f"{value!r} is not a colour like #00b140 or rgb(0, 177, 64)")


@dataclass
class Outputs:
    """Where one run writes and what it writes besides the alpha PNGs."""

    root: Path
    routing: bool = False
    foreground: bool = False
    rgba: bool = False
    composite: np.ndarray | Path | None = None
    trimap: bool = False
    mask: bool = False
    round_alpha: bool = False
    _backgrounds: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def paths(self, name: str) -> list[Path]:
        """Every file item ``name`` gets; the alpha PNG last."""
        extras = [
            (self.routing, ROUTING_DIR, ".jpg"),
            (self.foreground, FOREGROUND_DIR, ".png"),
            (self.rgba, RGBA_DIR, ".png"),
            (self.composite is not None, COMPOSITE_DIR, ".png"),
            (self.trimap, TRIMAP_DIR, ".png"),
            (self.mask, MASK_DIR, ".png"),
        ]
        paths = [self.root / folder / f"{name}{suffix}" for on, folder, suffix in extras if on]
        return [*paths, self.root / f"{name}.png"]

    @property
    def folders(self) -> list[Path]:
        return sorted({path.parent for path in self.paths("x")})

    def complete(self, name: str) -> bool:
        """Whether every output of ``name`` exists and is a whole image file (the alpha PNG, the
        official output, is also decoded)."""
        *extras, alpha = self.paths(name)
        return all(is_complete_image(path) for path in extras) and is_complete_image(
            alpha, decode=True
        )

    @property
    def needs_foreground(self) -> bool:
        return self.foreground or self.rgba or self.composite is not None

    def _background(self, hw: tuple[int, int]) -> np.ndarray:
        """The composite background ``[H, W, 3]`` float32 RGB in [0, 1] for an image size."""
        if hw not in self._backgrounds:
            if isinstance(self.composite, Path):
                image = read_rgb_levels(self.composite)
                scale = float(np.iinfo(image.dtype).max)
                resized = cv2.resize(image, hw[::-1], interpolation=cv2.INTER_AREA)
                self._backgrounds[hw] = resized.astype(np.float32) / scale
            else:
                colour = self.composite.astype(np.float32) / UINT8_MAX
                self._backgrounds[hw] = np.broadcast_to(colour, (*hw, 3))
        return self._backgrounds[hw]

    def write(
        self,
        name: str,
        alpha: np.ndarray,
        trimap: torch.Tensor,
        foreground: np.ndarray | None,
        figure: Callable[[], np.ndarray] | None,
        mask: np.ndarray | None = None,
    ) -> None:
        """Write every output of one item (each atomically; the alpha PNG last).

        Args:
            name: the item's name.
            alpha: ``[H, W]`` float32 alpha, known regions forced.
            trimap: ``[1, H, W]`` uint8, the trimap the model saw.
            foreground: ``[H, W, 3]`` uint8 RGB foreground colours, when an output needs them.
            figure: draws the routing picture (BGR), when requested.
            mask: ``[H, W]`` bool, the segmenter's mask the trimap was made from (written as
                0/255 when requested).

        Raises:
            OSError: a file cannot be encoded or written (names the file).
        """
        alpha_png = alpha_to_uint8(alpha, rounding=self.round_alpha)
        folder = self.root
        if figure is not None:
            write_image(folder / ROUTING_DIR / f"{name}.jpg", figure())
        if foreground is not None:
            if self.foreground:
                write_image(folder / FOREGROUND_DIR / f"{name}.png", foreground[:, :, ::-1])
            if self.rgba:
                bgra = np.dstack([foreground[:, :, ::-1], alpha_png])
                write_image(folder / RGBA_DIR / f"{name}.png", bgra)
            if self.composite is not None:
                weight = alpha_png[:, :, None].astype(np.float32) / UINT8_MAX
                background = self._background(alpha_png.shape)
                colours = foreground.astype(np.float32) / UINT8_MAX
                mixed = colours * weight + background * (1 - weight)
                composite = np.round(mixed * UINT8_MAX).astype(np.uint8)
                write_image(folder / COMPOSITE_DIR / f"{name}.png", composite[:, :, ::-1])
        if self.trimap:
            write_image(folder / TRIMAP_DIR / f"{name}.png", trimap[0].numpy())
        if self.mask and mask is not None:
            write_image(folder / MASK_DIR / f"{name}.png", (mask * UINT8_MAX).astype(np.uint8))
        write_image(folder / f"{name}.png", alpha_png)
