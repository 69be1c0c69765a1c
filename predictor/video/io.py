"""Reading clips: a video file (any container and codec FFmpeg decodes, through PyAV) or a folder
of numbered frames, one frame at a time.

- Frames come as ``[H, W, 3]`` RGB levels: uint8, or uint16 for frames of more than 8 bits (a
  16-bit PNG, a 10-bit video), as the image predictor reads images.
- A video file's frames are named by their index, zero-padded (``00000``); a folder's keep their
  file names (:func:`data.clips.list_frames` gives their order).
- Rotation metadata (a phone's display matrix) is applied, so frames, guidance and outputs are
  upright as players show them; rotations other than multiples of 90 degrees are refused.
- Variable frame rate is kept: every decoded frame is matted, and each frame's timestamp is
  passed on to the output videos (:mod:`predictor.video.encode`), which therefore play in sync
  with the input. A folder of frames plays at ``fps``.
- A damaged or truncated file gives its frames up to the damage, then :class:`BadSampleError`
  naming the file and the frame: a decoding error, a frame or packet flagged corrupt, or fewer
  frames (or a shorter duration) than the container declares.

References: PyAV (``av.open``, ``VideoFrame.rotation``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from data.clips import frame_name, list_frames
from data.image_io import IMAGE_EXTENSIONS, BadSampleError, read_rgb_levels

__all__ = [
    "DEFAULT_FOLDER_FPS",
    "ClipSource",
    "Frame",
    "FrameFolder",
    "VideoFile",
    "open_clip",
]

logger = logging.getLogger(__name__)

# Frame rate of the output videos of a folder of frames, unless --fps.
DEFAULT_FOLDER_FPS = Fraction(25)
# Degrees of a quarter turn: display rotations must be multiples of it.
QUARTER_TURN = 90
# Degrees a display rotation may be off a quarter turn (FFmpeg rounds the matrix's angle).
ROTATION_TOLERANCE = 1
# A decoded clip may end this many frame durations before the declared duration (rounding of
# container durations) before it counts as truncated.
DURATION_SLACK_FRAMES = 1.5
# Bits per component above which a video is decoded to 16-bit RGB.
EIGHT_BITS = 8


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        index: position in the clip, from 0.
        name: the file stem of its outputs.
        image: ``[H, W, 3]`` uint8 or uint16 RGB levels, upright.
        pts: presentation timestamp in ``time_base`` units.
        time_base: seconds per ``pts`` unit.
    """

    index: int
    name: str
    image: np.ndarray
    pts: int
    time_base: Fraction


class ClipSource:
    """A clip to read: its name, size and frame rate, and its frames in order.

    Attributes:
        path: the file or folder.
        name: the clip's name (its output folder): the file's stem or the folder's name.
        width, height: frame size (upright).
        rate: frames per second (nominal; frames keep their own timestamps).
    """

    path: Path
    name: str
    width: int
    height: int
    rate: Fraction

    def frame_names(self) -> list[str]:
        """The names of the clip's frames, without decoding them (a video's frames are counted
        from its packets)."""
        raise NotImplementedError

    def frames(self) -> Iterator[Frame]:
        """Decode the frames in order.

        Raises:
            BadSampleError: a frame cannot be decoded (after yielding the frames before it).
        """
        raise NotImplementedError


class FrameFolder(ClipSource):
    """A folder of numbered image files, played at ``fps``.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: it holds no image, or two files for one frame.
        BadSampleError: its first frame cannot be read.
    """

    def __init__(self, path: str | Path, fps: Fraction = DEFAULT_FOLDER_FPS) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.files = list_frames(self.path)
        if not self.files:
            raise ValueError(f"{self.path}: no frames (image files {', '.join(IMAGE_EXTENSIONS)})")
        self.rate = Fraction(fps)
        self.height, self.width = read_rgb_levels(self.files[0]).shape[:2]

    def frame_names(self) -> list[str]:
        return [path.stem for path in self.files]

    def frames(self) -> Iterator[Frame]:
        time_base = 1 / self.rate
        for index, path in enumerate(self.files):
            image = read_rgb_levels(path)
            if image.shape[:2] != (self.height, self.width):
                raise BadSampleError(
                    path,
                    f"frame {index}: size {image.shape[1]}x{image.shape[0]} differs from the "
                    f"clip's {self.width}x{self.height} (W x H)",
                )
            yield Frame(index, path.stem, image, index, time_base)


def _rotation(frame: av.VideoFrame, path: Path) -> int:
    """Quarter turns (counter-clockwise) that make a decoded frame upright."""
    degrees = frame.rotation or 0
    turns = round(degrees / QUARTER_TURN)
    if abs(degrees - turns * QUARTER_TURN) > ROTATION_TOLERANCE:
        raise BadSampleError(
            path,
            f"rotation metadata of {degrees} degrees: only multiples of 90 are supported "
            "(re-encode the clip upright)",
        )
    return turns % 4


class _DamageError(Exception):
    """Decoding stopped at damaged data (the reason)."""


class VideoFile(ClipSource):
    """A video file decoded by PyAV (its first video stream).

    Raises:
        BadSampleError: the file cannot be opened, has no video stream, or an unsupported
            rotation.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise BadSampleError(self.path, "no video stream")
                stream = container.streams.video[0]
                self.rate = Fraction(stream.average_rate or stream.guessed_rate or 0)
                first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise BadSampleError(
                self.path,
                f"frame 0: cannot open the video, damaged or truncated before its first frame "
                f"(an MP4 cut short loses its index): {exc}",
            ) from exc
        if first is None:
            raise BadSampleError(self.path, "frame 0: no frame can be decoded")
        if not self.rate:
            raise BadSampleError(self.path, "the container declares no frame rate")
        self.quarter_turns = _rotation(first, self.path)
        if self.quarter_turns:
            logger.info(
                "%s: rotation metadata of %d degrees: frames are turned upright",
                self.path,
                int(first.rotation),
            )
        self.width, self.height = first.width, first.height
        if self.quarter_turns % 2:
            self.width, self.height = self.height, self.width
        self.deep = max(c.bits for c in first.format.components) > EIGHT_BITS

    def _image(self, frame: av.VideoFrame) -> np.ndarray:
        image = frame.to_ndarray(format="rgb48le" if self.deep else "rgb24")
        return np.ascontiguousarray(np.rot90(image, self.quarter_turns))

    def frame_names(self) -> list[str]:
        try:
            with av.open(str(self.path)) as container:
                count = sum(1 for packet in container.demux(video=0) if packet.size)
        except av.FFmpegError:
            count = 0  # damaged: frames() reports where
        return [frame_name(index) for index in range(count)]

    def _decoded(self, container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
        """The stream's frames up to its end or its first damaged packet (the frames the decoder
        holds are flushed first); the damage, if any, is raised after them."""
        stream = container.streams.video[0]
        damage = None
        try:
            for packet in container.demux(stream):
                if packet.is_corrupt:
                    damage = "corrupt data"
                    break
                yield from packet.decode()
        except av.FFmpegError as exc:
            damage = f"cannot be decoded ({exc})"
        if damage is None:
            return  # demux ends with an empty packet, which flushed the decoder
        with contextlib.suppress(av.FFmpegError):  # nothing more can be had
            yield from stream.decode(None)  # flush the frames decoded before the damage
        raise _DamageError(damage)

    def frames(self) -> Iterator[Frame]:
        index = 0
        end = None  # the last frame's end time, seconds
        steps: set[int] = set()
        previous_pts = None
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                declared_frames = stream.frames
                declared_seconds = container.duration / av.time_base if container.duration else None
                for frame in self._decoded(container):
                    if frame.is_corrupt:
                        raise _DamageError("corrupt frame")
                    time_base = frame.time_base or stream.time_base or 1 / self.rate
                    pts = frame.pts
                    if pts is None:
                        pts = round(index / self.rate / time_base)
                    if previous_pts is not None:
                        steps.add(pts - previous_pts)
                    previous_pts = pts
                    end = float(pts * time_base + 1 / self.rate)
                    yield Frame(index, frame_name(index), self._image(frame), pts, time_base)
                    index += 1
        except _DamageError as exc:
            raise BadSampleError(self.path, f"frame {index}: {exc}") from None
        except av.FFmpegError as exc:
            raise BadSampleError(self.path, f"frame {index}: cannot be decoded ({exc})") from exc
        if declared_frames and index < declared_frames:
            raise BadSampleError(
                self.path,
                f"frame {index}: truncated or damaged (the container declares "
                f"{declared_frames} frames, {index} could be decoded)",
            )
        slack = DURATION_SLACK_FRAMES / self.rate
        if declared_seconds and end is not None and end < declared_seconds - slack:
            raise BadSampleError(
                self.path,
                f"frame {index}: truncated or damaged (the container declares "
                f"{declared_seconds:.3f} s, the frames end at {end:.3f} s)",
            )
        if len(steps) > 1:
            logger.info(
                "%s: variable frame rate: the output videos keep each frame's timestamp", self.path
            )


def open_clip(path: str | Path, fps: Fraction = DEFAULT_FOLDER_FPS) -> ClipSource:
    """A clip from a video file or a folder of frames.

    Args:
        path: the video file or folder.
        fps: frame rate of a folder's output videos.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError, BadSampleError: see :class:`FrameFolder` and :class:`VideoFile`.
    """
    path = Path(path)
    if path.is_dir():
        return FrameFolder(path, fps)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file or folder of frames")
    return VideoFile(path)
