"""Speed and memory of the video pipeline, for ``tools/video_benchmark.py``:

- :func:`write_speed_clip`: a synthetic clip as a folder of frames with one realistic trimap per
  frame (the benchmark's subject with a wavy edge and an unknown band of ``unknown`` of the
  pixels, :func:`data.synthetic.make_benchmark_inputs`);
- :func:`loop_seconds`: the baseline, the image predictor called on each frame in a loop (read
  the frame and its trimap, predict, write the alpha PNG), as one would script it;
- :func:`pipeline_seconds`: the same frames through :func:`predictor.video.pipeline.matte_clip`
  (decoding, the model and writing overlapped), with ``--temporal off`` or ``flow``;
- :func:`memory_profile`: the process's RSS while the pipeline streams a long clip (a video file
  written frame by frame, its first frame's mask propagated by flow or by SAM 2's video model,
  the flow mode on), sampled after chosen frames, and its peak.
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np

from data.clips import frame_name
from data.image_io import write_image
from data.synthetic import make_benchmark_inputs
from data.synthetic_clips import MASK_THRESHOLD, ClipMotion, iter_clip
from predictor.matting import ImagePredictor
from predictor.outputs import alpha_to_uint8
from predictor.profiling import uint8_inputs
from predictor.video.frames import ClipOutputs
from predictor.video.guidance import ClipGuidance
from predictor.video.io import open_clip
from predictor.video.pipeline import VideoSettings, matte_clip
from predictor.video.sam2_propagation import VideoSegmenter
from utils.memory import current_memory_bytes, peak_memory_bytes

__all__ = [
    "loop_seconds",
    "memory_profile",
    "pipeline_seconds",
    "write_memory_clip",
    "write_speed_clip",
]

# Unknown width of the long clip's propagated trimaps, px.
MEMORY_UNKNOWN_WIDTH = 10
# The long clip is stored losslessly enough for a fair decode (H.264, near-lossless).
_CLIP_CODEC, _CLIP_FORMAT, _CLIP_OPTIONS = "libx264", "yuv420p", {"crf": "12"}


def write_speed_clip(folder: Path, size: tuple[int, int], num_frames: int, unknown: float) -> None:
    """``folder/frames/<frame>.png`` and ``folder/trimaps/<frame>.png`` (see the module
    docstring)."""
    _, trimap = uint8_inputs(make_benchmark_inputs(*size, unknown=unknown))
    for folder_name in ("frames", "trimaps"):
        (folder / folder_name).mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(iter_clip(0, size, num_frames)):
        write_image(folder / "frames" / f"{frame_name(index)}.png", frame.image[:, :, ::-1])
        write_image(folder / "trimaps" / f"{frame_name(index)}.png", trimap)


def loop_seconds(predictor: ImagePredictor, folder: Path, out: Path) -> float:
    """Wall seconds of the per-frame loop over a :func:`write_speed_clip` folder."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path in sorted((folder / "frames").iterdir()):
        alpha = predictor(path, folder / "trimaps" / path.name)
        write_image(out / path.name, alpha_to_uint8(alpha))
    return time.perf_counter() - start


def pipeline_seconds(predictor: ImagePredictor, folder: Path, out: Path, temporal: str) -> float:
    """Wall seconds of the pipeline over a :func:`write_speed_clip` folder."""
    guidance = ClipGuidance(folder / "trimaps", None, False, None)
    settings = VideoSettings(temporal=temporal, overwrite=True)
    start = time.perf_counter()
    report = matte_clip(
        predictor, open_clip(folder / "frames"), guidance, ClipOutputs(out), settings
    )
    if report.failed:
        raise RuntimeError(f"pipeline failed: {report.failed}")
    return time.perf_counter() - start


def write_memory_clip(path: Path, mask: Path, size: tuple[int, int], num_frames: int) -> None:
    """A long synthetic clip as a video file (encoded frame by frame) and its first frame's mask."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(_CLIP_CODEC, rate=25, options=dict(_CLIP_OPTIONS))
        stream.height, stream.width = size
        stream.pix_fmt = _CLIP_FORMAT
        for index, frame in enumerate(iter_clip(0, size, num_frames, ClipMotion())):
            if index == 0:
                write_image(mask, np.where(frame.alpha > MASK_THRESHOLD, 255, 0).astype(np.uint8))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def memory_profile(
    predictor: ImagePredictor,
    video: Path,
    mask: Path,
    out: Path,
    samples: tuple[int, ...],
    segmenter: VideoSegmenter | None = None,
) -> dict[str, object]:
    """RSS (bytes) after each frame index in ``samples`` while the pipeline runs over ``video``
    (propagation from ``mask``: by flow, or by SAM 2 with ``segmenter``; ``--temporal flow``,
    RGBA PNGs and a lossless video), and the peak RSS.

    Returns:
        ``{"rss_after_frame": {index: bytes}, "peak": bytes, "frames": count}``.
    """
    rss: dict[int, int] = {}
    counted = 0

    def sample(index: int) -> None:
        nonlocal counted
        counted += 1
        if index in samples:
            rss[index] = current_memory_bytes("cpu")

    guidance = ClipGuidance(None, mask, True, MEMORY_UNKNOWN_WIDTH)
    outputs = ClipOutputs(out, rgba=True)
    settings = VideoSettings(
        temporal="flow",
        propagate="flow" if segmenter is None else "sam2",
        segmenter=segmenter,
        unknown_width=MEMORY_UNKNOWN_WIDTH,
        videos=("lossless",),
        overwrite=True,
    )
    report = matte_clip(predictor, open_clip(video), guidance, outputs, settings, progress=sample)
    if report.failed:
        raise RuntimeError(f"pipeline failed: {report.failed}")
    return {"rss_after_frame": rss, "peak": peak_memory_bytes("cpu"), "frames": counted}
