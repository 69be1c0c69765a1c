"""Writing videos of a clip's results (``--save-video``), with PyAV:

========== ================ ======================================================================
kind       file             content
========== ================ ======================================================================
alpha      ``alpha.mp4``    the alpha as a grayscale video (H.264, 8 bits; lossy)
composite  ``composite.mp4`` the foreground over ``--composite`` (colour, image or video; H.264)
prores     ``rgba.mov``     foreground colours with alpha, ProRes 4444 (``prores_ks``, 10-bit alpha)
webm       ``rgba.webm``    foreground colours with alpha, VP9 (``libvpx-vp9``, ``yuva420p``)
lossless   ``alpha.mkv``    the alpha, FFV1 (gray or gray16le): decoded frames equal the PNGs
========== ================ ======================================================================

H.264 takes 4:2:0 chroma when both sides are even and 4:4:4 otherwise, and one encoder thread.
Every frame keeps the input frame's timestamp (variable frame rates stay in sync). Each video is
encoded by its own thread from a bounded queue while the clip is matted, into a temporary file
renamed over the target when the clip ends (:func:`utils.file_io.atomic_write`), so a video is
either whole or absent; the container and codecs are asked for bit-exact output, so the same
frames give the same bytes.

References: PyAV (``av.open``, ``add_stream``); FFmpeg's ``prores_ks``, ``libvpx-vp9``, ``ffv1``.
"""

from __future__ import annotations

import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import IO

import av
import numpy as np

from predictor.video.kinds import VideoKind
from utils.file_io import atomic_write

__all__ = ["VideoEncoder"]

# Frames waiting for an encoder (each holds one frame's arrays).
ENCODER_QUEUE_FRAMES = 4
_BITEXACT = {"fflags": "+bitexact"}


_ABORT = object()  # queued by VideoEncoder.abort


class _AbortedError(Exception):
    """The video is abandoned (atomic_write removes its temporary file)."""


class VideoEncoder:
    """Encodes one output video in a background thread.

    Args:
        path: the video file.
        kind: what it holds (:data:`predictor.video.kinds.VIDEO_KINDS`).
        width, height: frame size.
        rate: nominal frame rate.
        deep: 16-bit alpha (only the lossless kind keeps it; the others take 8 bits).

    Raises:
        ValueError: the installed FFmpeg lacks the kind's encoder.
    """

    def __init__(
        self, path: Path, kind: VideoKind, width: int, height: int, rate: Fraction, deep: bool
    ) -> None:
        if kind.codec not in av.codecs_available:
            raise ValueError(f"{path.name}: this FFmpeg has no {kind.codec} encoder")
        self.path, self.kind = path, kind
        self.width, self.height, self.rate, self.deep = width, height, rate, deep
        self.input_format = kind.input_format(deep)
        self._queue: queue.Queue = queue.Queue(ENCODER_QUEUE_FRAMES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"encode-{path.name}", daemon=True)
        self._thread.start()

    def put(self, array: np.ndarray, pts: int, time_base: Fraction) -> None:
        """Queue one frame (``[H, W]`` gray or ``[H, W, C]`` RGB(A) in the kind's input format).

        Raises:
            OSError: the encoder has failed (its error).
        """
        self._raise()
        self._queue.put((array, pts, time_base))

    def close(self) -> None:
        """Finish the video (all queued frames encoded, the file renamed into place).

        Raises:
            OSError: encoding or writing failed.
        """
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop without writing the video (its temporary file is removed)."""
        self._queue.put(_ABORT)
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise OSError(f"{self.path}: cannot encode the video: {self._error}") from self._error

    def _run(self) -> None:
        try:
            atomic_write(self.path, self._encode)
        except _AbortedError:
            pass
        except BaseException as exc:  # reported by put/close in the pipeline's thread
            self._error = exc
            while self._queue.get() not in (None, _ABORT):  # drain, so that put never blocks
                continue

    def _encode(self, file: IO[bytes]) -> None:
        with av.open(file, "w", format=self.kind.container, options=_BITEXACT) as container:
            stream = container.add_stream(
                self.kind.codec, rate=self.rate, options=dict(self.kind.options)
            )
            stream.width, stream.height = self.width, self.height
            stream.pix_fmt = self.kind.pixel_format(self.width, self.height, self.deep)
            stream.codec_context.flags |= av.codec.context.Flags.bitexact
            started = False
            while (item := self._queue.get()) is not None:
                if item is _ABORT:
                    raise _AbortedError
                array, pts, time_base = item
                if not started:
                    stream.codec_context.time_base = time_base
                    stream.time_base = time_base
                    started = True
                frame = av.VideoFrame.from_ndarray(array, format=self.input_format)
                frame.pts, frame.time_base = pts, time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
