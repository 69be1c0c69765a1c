"""Where each frame's guidance comes from: a folder of per-frame trimaps or masks
(``--trimap-dir`` / ``--mask-dir``), the first frame's trimap or mask (``--trimap`` / ``--mask``)
or prompts (``--box`` / ``--point``, made into its mask by the propagator's segmenter), or, for
the frames that have none, propagation from the last keyframe
(:mod:`predictor.video.propagators`).

Files of a guidance folder match a frame by name (same stem), else by the number in the name
(``mask_0012.png`` is frame ``frame_0012`` or, for a video file, frame index 12). A folder that
has a file for every frame is the "refine another model's masks" path; one with a few files gives
keyframes. Masks become trimaps as for images (:func:`data.trimap.trimap_from_mask`, the same
``--unknown-width``, fixed or ``auto``), in the frame's upright orientation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.clips import frame_number, list_frames
from data.image_io import BadSampleError, read_trimap_levels
from data.trimap import binarize_mask, trimap_from_mask
from predictor.inputs import mask_levels
from predictor.prompts import Prompts

__all__ = ["ClipGuidance", "Guide"]


@dataclass(frozen=True)
class Guide:
    """One frame's own guidance: a file, or prompts (then ``path`` is None)."""

    path: Path | None
    is_mask: bool
    prompts: Prompts | None = None


class ClipGuidance:
    """The guidance files of one clip.

    Args:
        folder: per-frame (or keyframe) files, or None.
        first: the first frame's file, or None.
        is_mask: the files are masks (else trimaps).
        unknown_width: the band of masks (px, fraction or ``"auto"``).
        prompts: the first frame's prompts (instead of ``first``), or None.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: two files of ``folder`` carry the same frame number.
    """

    def __init__(
        self,
        folder: Path | None,
        first: Path | None,
        is_mask: bool,
        unknown_width: float | str | None,
        prompts: Prompts | None = None,
    ) -> None:
        self.is_mask = is_mask
        self.prompts = prompts
        self.unknown_width = unknown_width
        self.first = first
        self.folder = folder
        self._by_stem: dict[str, Path] = {}
        self._by_number: dict[int, Path] = {}
        if folder is not None:
            for path in list_frames(folder):
                self._by_stem[path.stem] = path
                number = frame_number(path.stem)
                if number is None:
                    continue
                if number in self._by_number:
                    raise ValueError(
                        f"{folder}: {self._by_number[number].name} and {path.name} are both "
                        f"frame {number}"
                    )
                self._by_number[number] = path

    def guide(self, index: int, name: str) -> Guide | None:
        """Frame ``index`` (named ``name``)'s own guidance, or None."""
        if index == 0 and self.prompts is not None:
            return Guide(None, True, self.prompts)
        if index == 0 and self.first is not None:
            return Guide(self.first, self.is_mask)
        path = self._by_stem.get(name)
        if path is None:
            number = frame_number(name)
            path = self._by_number.get(index if number is None else number)
        return None if path is None else Guide(path, self.is_mask)

    def load(self, guide: Guide, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """A guidance file as the frame's trimap, and the mask when it is a mask.

        Args:
            guide: the file.
            shape: the frame's ``(H, W)``.

        Returns:
            ``[H, W]`` uint8 trimap, and ``[H, W]`` bool mask (None for a trimap).

        Raises:
            BadSampleError: the file cannot be read, has another size or an unsupported type.
        """
        if guide.is_mask:
            levels = mask_levels(guide.path)
            self._check_size(guide.path, levels.shape, shape)
            try:
                mask = binarize_mask(levels)
                trimap = trimap_from_mask(levels, self.unknown_width, source=str(guide.path))
            except ValueError as exc:
                raise BadSampleError(guide.path, str(exc)) from exc
            return trimap, mask
        trimap = read_trimap_levels(guide.path)
        self._check_size(guide.path, trimap.shape, shape)
        return trimap, None

    @staticmethod
    def _check_size(path: Path, size: tuple[int, ...], shape: tuple[int, int]) -> None:
        if tuple(size[:2]) != tuple(shape):
            raise BadSampleError(
                path,
                f"size {size[1]}x{size[0]} differs from the frame's {shape[1]}x{shape[0]} "
                "(W x H, upright)",
            )
