"""Clips on disk: folders of numbered frames, how frames are named and ordered, and the folder
layouts of video matting datasets.

A clip folder holds one image per frame; frames are ordered by the number in their names
(``frame_2.png`` before ``frame_10.png``), then by name. Frames of a video file are named by
their index, zero-padded (``00000``, as the VideoMatte240K release numbers its frames).

A folder of clips (evaluation, sharded runs) has one of these layouts, detected in this order:

- ``ROOT/pha/<clip>/<frame>.png``: the VideoMatte240K release (``pha/`` and ``fgr/`` side by
  side, one sub-folder per clip);
- ``ROOT/<clip>/pha/<frame>.png``: VideoMatte240K evaluation sets and the outputs of
  ``inference.py --video`` (``pha/``, ``fgr/``, ... inside each clip's folder);
- ``ROOT/<clip>/<frame>.png``: one folder of frames per clip (VideoMatting108's ``FG_done``,
  whose RGBA frames carry the alpha in their alpha channel).
"""

from __future__ import annotations

import re
from pathlib import Path

from data.image_io import list_images

__all__ = [
    "ALPHA_DIR",
    "FRAME_DIGITS",
    "clip_folders",
    "frame_name",
    "frame_number",
    "list_frames",
]

# Digits of a video file's frame names.
FRAME_DIGITS = 5
# The alpha sub-folder of a clip (VideoMatte240K's name, also the one inference.py writes).
ALPHA_DIR = "pha"
_TRAILING_NUMBER = re.compile(r"(\d+)\D*$")


def frame_name(index: int) -> str:
    """The name of frame ``index`` of a video file: zero-padded, ``00000``."""
    return f"{index:0{FRAME_DIGITS}d}"


def frame_number(stem: str) -> int | None:
    """The last number in a frame's name (``frame_0012`` -> 12), or None without digits."""
    match = _TRAILING_NUMBER.search(stem)
    return int(match.group(1)) if match else None


def _frame_order(path: Path) -> tuple[int, int, str]:
    number = frame_number(path.stem)
    return (number is None, number or 0, path.name)


def list_frames(folder: str | Path) -> list[Path]:
    """The image files of a clip folder in frame order (by the number in their names).

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: two files share a stem (``0001.png`` and ``0001.jpg``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of frames")
    frames = sorted(list_images(folder), key=_frame_order)
    stems = [path.stem for path in frames]
    if len(set(stems)) != len(stems):
        twice = sorted({stem for stem in stems if stems.count(stem) > 1})
        raise ValueError(f"{folder}: several files for frame(s) {', '.join(twice[:5])}")
    return frames


def _sub_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def clip_folders(root: str | Path) -> dict[str, Path]:
    """The clips of a folder of clips: name -> the folder holding its alpha (or image) frames,
    in one of the layouts of the module docstring.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of clips")
    release = root / ALPHA_DIR
    if release.is_dir() and _sub_folders(release):
        return {clip.name: clip for clip in _sub_folders(release)}
    clips = {}
    for clip in _sub_folders(root):
        inner = clip / ALPHA_DIR
        clips[clip.name] = inner if inner.is_dir() else clip
    return clips
