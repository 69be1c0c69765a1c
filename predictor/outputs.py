"""What a run writes for each image: the official 8-bit alpha PNG and, on request, the foreground
colours, an RGBA cutout, a composite over a colour or an image, the trimap used and the routing
picture, and for a prompt run the segmenter's mask the trimap was made from; each file written
atomically.

The alpha PNG is written first, then the extras, each on its own: an extra that cannot be made or
written is reported (:meth:`Outputs.write` returns it with the reason) and costs neither the
alpha nor the other extras. An item is complete (:meth:`Outputs.complete`, what a resumed run
skips) when its alpha PNG decodes and every requested extra is a whole file; otherwise the run
predicts it again and rewrites all its files (the prediction is the same, and the routing picture
needs the forward anyway).

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

from data.image_io import is_complete_image, read_rgb_levels, write_image
from data.pixel_limits import DEFAULT_MAX_PIXELS
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


def alpha_to_uint8(alpha: np.ndarray, rounding: bool = False) -> np.ndarray:
    """8-bit alpha as the official script writes it: ``floor(alpha * 255)`` (torchvision's
    float-to-PIL conversion truncates), or rounded.

    Args:
        alpha: ``[H, W]`` alpha in [0, 1], known regions already forced (float32).
        rounding: round to the nearest level instead of truncating.

    Returns:
        ``[H, W]`` uint8 array.
    """
    scaled = np.clip(np.asarray(alpha, dtype=np.float32), 0, 1) * np.float32(UINT8_MAX)
    return (np.round(scaled) if rounding else scaled).astype(np.uint8)


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
    """Where one run writes and what it writes besides the alpha PNGs.

    ``max_pixels`` bounds what the writer reads: the alpha PNGs decoded by :meth:`complete` and
    the composite background image.
    """

    root: Path
    routing: bool = False
    foreground: bool = False
    rgba: bool = False
    composite: np.ndarray | Path | None = None
    trimap: bool = False
    mask: bool = False
    round_alpha: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    _backgrounds: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def extra_paths(self, name: str) -> dict[str, Path]:
        """The requested extra outputs of item ``name``: ``{folder name: file}``."""
        extras = [
            (self.routing, ROUTING_DIR, ".jpg"),
            (self.foreground, FOREGROUND_DIR, ".png"),
            (self.rgba, RGBA_DIR, ".png"),
            (self.composite is not None, COMPOSITE_DIR, ".png"),
            (self.trimap, TRIMAP_DIR, ".png"),
            (self.mask, MASK_DIR, ".png"),
        ]
        return {
            folder: self.root / folder / f"{name}{suffix}" for on, folder, suffix in extras if on
        }

    def alpha_path(self, name: str) -> Path:
        return self.root / f"{name}.png"

    @property
    def folders(self) -> list[Path]:
        return sorted({self.root, *(path.parent for path in self.extra_paths("x").values())})

    def complete(self, name: str) -> bool:
        """Whether the alpha PNG of ``name`` decodes and every requested extra is a whole image
        file (see the module docstring)."""
        alpha = is_complete_image(self.alpha_path(name), decode=True, max_pixels=self.max_pixels)
        return alpha and all(map(is_complete_image, self.extra_paths(name).values()))

    @property
    def needs_foreground(self) -> bool:
        return self.foreground or self.rgba or self.composite is not None

    def _background(self, hw: tuple[int, int]) -> np.ndarray:
        """The composite background ``[H, W, 3]`` float32 RGB in [0, 1] for an image size."""
        if hw not in self._backgrounds:
            if isinstance(self.composite, Path):
                image = read_rgb_levels(self.composite, max_pixels=self.max_pixels)
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
        trimap: np.ndarray,
        foreground: np.ndarray | None,
        figure: Callable[[], np.ndarray] | None,
        mask: np.ndarray | None = None,
    ) -> list[tuple[Path, str]]:
        """Write every output of one item, each atomically: the alpha PNG first, then each extra
        on its own (one that fails is returned, not raised).

        Args:
            name: the item's name.
            alpha: ``[H, W]`` float32 alpha, known regions forced.
            trimap: ``[1, H, W]`` uint8, the trimap the model saw.
            foreground: ``[H, W, 3]`` uint8 RGB foreground colours, when an output needs them.
            figure: draws the routing picture (BGR), when requested.
            mask: ``[H, W]`` bool, the segmenter's mask the trimap was made from (written as
                0/255 when requested).

        Returns:
            the extras that could not be made or written: ``(file, reason)`` each.

        Raises:
            OSError: the alpha PNG cannot be encoded or written (names the file); no extra is
                written then.
        """
        alpha_png = alpha_to_uint8(alpha, rounding=self.round_alpha)
        write_image(self.alpha_path(name), alpha_png)
        makers = {
            ROUTING_DIR: figure,
            FOREGROUND_DIR: lambda: foreground[:, :, ::-1],  # RGB -> BGR
            RGBA_DIR: lambda: np.dstack([foreground[:, :, ::-1], alpha_png]),
            COMPOSITE_DIR: lambda: self._composite(foreground, alpha_png)[:, :, ::-1],
            TRIMAP_DIR: lambda: np.asarray(trimap)[0],
            MASK_DIR: lambda: (mask * UINT8_MAX).astype(np.uint8),  # bool -> 0/255
        }
        failed = []
        for kind, path in self.extra_paths(name).items():
            try:
                write_image(path, makers[kind]())
            # Any failure of an optional output (a full disk, a picture that cannot be drawn) is
            # reported with its file; it must not cost the alpha or the other outputs.
            except Exception as exc:
                failed.append((path, f"{type(exc).__name__}: {exc}"))
        return failed

    def _composite(self, foreground: np.ndarray, alpha_png: np.ndarray) -> np.ndarray:
        """The foreground over the composite background, ``[H, W, 3]`` uint8 RGB."""
        weight = alpha_png[:, :, None].astype(np.float32) / UINT8_MAX
        background = self._background(alpha_png.shape)
        colours = foreground.astype(np.float32) / UINT8_MAX
        mixed = colours * weight + background * (1 - weight)
        return np.round(mixed * UINT8_MAX).astype(np.uint8)
