"""The forms of a clip's outputs: the alpha PNGs' bit depths (:data:`ALPHA_BITS`) and the kinds of
output video (``--save-video``): file, container, codec, pixel formats and encoder options of
each (:data:`VIDEO_KINDS`); :mod:`predictor.video.encode` writes them. No PyAV here, so that the
command-line options import without it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ALPHA_BITS", "VIDEO_KINDS", "VideoKind"]

# Bit depths of the alpha PNGs (--alpha-bits), the default first.
ALPHA_BITS = (8, 16)

# H.264 constant rate factor: visually lossless for mattes and composites.
H264_CRF = "16"
# x264 threads: one, so that the same frames give the same bytes (a resumed run's video equals
# an uninterrupted run's; multi-threaded x264 was seen to differ between runs on a busy machine).
H264_THREADS = "1"
# VP9: constant quality (b:v 0 with a crf).
VP9_CRF = "20"
# ProRes profile 4 is 4444 (with alpha).
PRORES_4444 = "4"


def _h264_format(width: int, height: int) -> str:
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


@dataclass(frozen=True)
class VideoKind:
    """One kind of output video.

    Attributes:
        file: its file name in the clip's output folder.
        container: FFmpeg muxer name.
        codec: FFmpeg encoder name.
        pixel_format: the encoder's pixel format for a frame size (and deep alpha).
        input_format: the PyAV format of the arrays it is given (``gray``, ``gray16le``,
            ``rgb24``, ``rgba``) for deep alpha or not.
        options: encoder options.
        needs_foreground: built from foreground colours (and alpha).
        needs_composite: built from the composite.
    """

    file: str
    container: str
    codec: str
    pixel_format: Callable[[int, int, bool], str]
    input_format: Callable[[bool], str]
    options: dict[str, str] = field(default_factory=dict)
    needs_foreground: bool = False
    needs_composite: bool = False


VIDEO_KINDS: dict[str, VideoKind] = {
    "alpha": VideoKind(
        "alpha.mp4",
        "mp4",
        "libx264",
        lambda w, h, deep: _h264_format(w, h),
        lambda deep: "gray",
        {"crf": H264_CRF, "threads": H264_THREADS},
    ),
    "composite": VideoKind(
        "composite.mp4",
        "mp4",
        "libx264",
        lambda w, h, deep: _h264_format(w, h),
        lambda deep: "rgb24",
        {"crf": H264_CRF, "threads": H264_THREADS},
        needs_composite=True,
    ),
    "prores": VideoKind(
        "rgba.mov",
        "mov",
        "prores_ks",
        lambda w, h, deep: "yuva444p10le",
        lambda deep: "rgba",
        {"profile": PRORES_4444},
        needs_foreground=True,
    ),
    "webm": VideoKind(
        "rgba.webm",
        "webm",
        "libvpx-vp9",
        lambda w, h, deep: "yuva420p",
        lambda deep: "rgba",
        {"crf": VP9_CRF, "b": "0"},
        needs_foreground=True,
    ),
    "lossless": VideoKind(
        "alpha.mkv",
        "matroska",
        "ffv1",
        lambda w, h, deep: "gray16le" if deep else "gray",
        lambda deep: "gray16le" if deep else "gray",
    ),
}
