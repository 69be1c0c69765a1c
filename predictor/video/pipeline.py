"""Matting one clip as a stream: frames are decoded (and their optical flow measured) by a reader
thread, matted in the calling thread, and written by a writer thread that also feeds the video
encoders (each in its own thread), all through bounded queues, so decoding, encoding and the
model overlap and memory stays bounded whatever the clip's length.

Resume: frames are taken in order; every frame before the first one whose outputs are
incomplete is *replayed* instead of matted: its written alpha PNG is read back, and guidance
propagation and the temporal filter go through it exactly as in the first run (they depend on
the frames, the guidance and the written alphas only; SAM 2's memory is rebuilt by running SAM 2
over the replayed frames), so the frames after it, and the videos, which are re-encoded whole,
come out byte for byte as in an uninterrupted run. A clip whose frames and videos are all
complete is skipped.

Failures: a frame whose guidance is missing or unreadable, or whose prediction fails, is
reported and left without outputs (the next frame is not blended with it); a damaged video file
ends the clip at the damage, after the frames before it. A clip with a failed frame gets no
videos (an earlier complete one is left in place).
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from threading import BoundedSemaphore
from typing import Any

import numpy as np

from data.image_io import BadSampleError
from data.trimap import AUTO_WIDTH
from predictor.prediction import BatchPrediction, ImagePredictor
from predictor.runner import Summary
from predictor.video.encode import VideoEncoder
from predictor.video.flow import FlowEstimator, FlowPair, to_gray
from predictor.video.frames import Background, ClipOutputs, composite_over, to_uint8
from predictor.video.guidance import ClipGuidance
from predictor.video.io import ClipSource, Frame
from predictor.video.kinds import VIDEO_KINDS
from predictor.video.propagators import DEFAULT_PROPAGATOR, propagator_class
from predictor.video.temporal import DEFAULT_STRENGTH, temporal_blend, temporal_weight

__all__ = ["VideoSettings", "matte_clip"]

logger = logging.getLogger(__name__)

# Frames decoded ahead of the model, and frames waiting for the writer.
READ_AHEAD_FRAMES = 2
MAX_PENDING_WRITES = 2
# Seconds between checks of the stop flag while a queue is full.
_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class VideoSettings:
    """How clips are matted (the video options of ``inference.py``).

    Attributes:
        temporal: ``off`` or ``flow`` (:mod:`predictor.video.temporal`).
        strength: weight of the carried previous alpha with ``flow``.
        propagate: the propagator of frames without guidance (:data:`PROPAGATORS`).
        segmenter: what the propagator makes masks with (prompts, SAM 2), as
            :func:`~predictor.video.propagators.load_propagation_segmenter` loads it, or None.
        unknown_width: the band of propagated trimaps (px, fraction or ``"auto"``).
        videos: kinds of output videos (:data:`VIDEO_KINDS`).
        overwrite: redo frames whose outputs exist.
    """

    temporal: str = "off"
    strength: float = DEFAULT_STRENGTH
    propagate: str = DEFAULT_PROPAGATOR
    segmenter: Any = None
    unknown_width: float | str = AUTO_WIDTH
    videos: tuple[str, ...] = ()
    overwrite: bool = False


class _Reader:
    """Decodes frames (and measures the flow of those ``wants_flow`` selects) in a thread, into
    a bounded queue; a decoding error is queued as the last item."""

    def __init__(self, source: ClipSource, wants_flow: Callable[[Frame], bool]) -> None:
        self.source, self.wants_flow = source, wants_flow
        self._queue: queue.Queue = queue.Queue(READ_AHEAD_FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        estimator, previous = FlowEstimator(), None
        try:
            for frame in self.source.frames():
                gray = to_gray(frame.image)
                flow = None
                if previous is not None and self.wants_flow(frame):
                    flow = estimator.pair(previous, gray)
                previous = gray
                if not self._put((frame, flow)):
                    return
        except (BadSampleError, OSError) as exc:
            self._put(exc)
        self._put(None)

    def __iter__(self) -> Iterator[tuple[Frame, FlowPair | None] | BadSampleError]:
        while (item := self._queue.get()) is not None:
            yield item
            if isinstance(item, BaseException):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Previous:
    """What the temporal filter keeps of the previous frame."""

    image: np.ndarray
    alpha: np.ndarray  # [H, W] float32, the written levels / full scale


def _first_missing(names: list[str], outputs: ClipOutputs, overwrite: bool) -> int:
    if overwrite:
        return 0
    return next((i for i, name in enumerate(names) if not outputs.complete(name)), len(names))


def matte_clip(
    predictor: ImagePredictor,
    source: ClipSource,
    guidance: ClipGuidance,
    outputs: ClipOutputs,
    settings: VideoSettings,
    background: np.ndarray | object | None = None,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Matte one clip into ``outputs`` (see the module docstring).

    Args:
        predictor: the image predictor (``predict_levels`` on a batch of one).
        source: the clip.
        guidance: its guidance files.
        outputs: its per-frame files.
        settings: temporal mode, propagation, videos, overwrite.
        background: the composite's background (colour, image path or clip), when requested.
        progress: called with each frame's index once it is handled.

    Returns:
        the :class:`predictor.runner.Summary` of the clip's frames (``<clip>/<frame>``).
    """
    report = Summary()
    names = source.frame_names()
    first_missing = _first_missing(names, outputs, settings.overwrite)
    videos = {kind: outputs.root / VIDEO_KINDS[kind].file for kind in settings.videos}
    if names and first_missing == len(names) and all(p.is_file() for p in videos.values()):
        report.skipped = [f"{source.name}/{name}" for name in names]
        return report
    for folder in outputs.folders:
        folder.mkdir(parents=True, exist_ok=True)
    deep = outputs.alpha_bits > 8
    encoders = {
        kind: VideoEncoder(path, VIDEO_KINDS[kind], source.width, source.height, source.rate, deep)
        for kind, path in videos.items()
    }
    backdrop = None
    if background is not None:
        backdrop = Background(background, (source.height, source.width))
    flow_for_temporal = settings.temporal == "flow"
    propagator = propagator_class(settings.propagate)(settings.unknown_width, settings.segmenter)

    def wants_flow(frame: Frame) -> bool:
        if guidance.guide(frame.index, frame.name) is None:
            return propagator.needs_flow
        return flow_for_temporal and frame.index >= first_missing

    reader = _Reader(source, wants_flow)
    slots = BoundedSemaphore(MAX_PENDING_WRITES)
    writes: list[tuple[str, Future]] = []
    anchored, previous = False, None
    needs_composite = outputs.composite or any(VIDEO_KINDS[k].needs_composite for k in encoders)
    needs_foreground = outputs.foreground or outputs.rgba or needs_composite
    needs_foreground |= any(VIDEO_KINDS[k].needs_foreground for k in encoders)
    # PyTorch's foreground estimation, imported only when an output needs colours (a run of the
    # onnxruntime predictor needs PyTorch for nothing else)
    colour_estimation = (
        importlib.import_module("predictor.foreground") if needs_foreground else None
    )
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer:
            for item in reader:
                if isinstance(item, BaseException):
                    report.fail(
                        getattr(item, "path", source.path), str(getattr(item, "reason", item))
                    )
                    break
                frame, flow = item
                label = f"{source.name}/{frame.name}"
                shape = frame.image.shape[:2]
                try:
                    backdrop_frame = backdrop.next() if backdrop is not None else None
                    guide = guidance.guide(frame.index, frame.name)
                    if guide is not None and guide.prompts is not None:
                        trimap = propagator.prompt(frame.index, frame.image, guide.prompts)
                        anchored = True
                    elif guide is not None:
                        trimap, mask = guidance.load(guide, shape)
                        propagator.anchor(frame.index, frame.image, trimap, mask)
                        anchored = True
                    elif anchored:
                        trimap = propagator.propagate(frame.index, frame.image, flow)
                    else:
                        raise BadSampleError(
                            source.path,
                            f"frame {frame.index} ({frame.name}): no guidance, and no keyframe "
                            "before it to propagate from",
                        )
                    replay = frame.index < first_missing
                    if replay:
                        levels = outputs.read_levels(frame.name)
                    else:
                        start = time.perf_counter()
                        prediction = _predict(predictor, frame.image, trimap)
                        report.model_seconds += time.perf_counter() - start
                        alpha = prediction.alpha[0]
                        for block, keep in prediction.routing(0).keep.items():
                            report.routed_share_sums[block] += float(keep.mean())
                        if flow_for_temporal and previous is not None and flow is not None:
                            weight = temporal_weight(
                                frame.image, previous.image, flow, settings.strength
                            )
                            alpha = temporal_blend(alpha, trimap, previous.alpha, weight, flow)
                        levels = outputs.levels(alpha)
                except BadSampleError as exc:
                    report.fail(exc.path, exc.reason)
                    previous = None
                    continue
                # Out of memory, another failure of the forward or the segmenter, bad prompts.
                except (RuntimeError, ValueError) as exc:
                    report.fail(source.path, f"frame {frame.index} ({frame.name}): {exc}")
                    previous = None
                    continue
                full_scale = np.float32(np.iinfo(levels.dtype).max)
                previous = _Previous(frame.image, levels.astype(np.float32) / full_scale)
                foreground = composite = None
                if colour_estimation is not None and (encoders or not replay):
                    colours = colour_estimation.estimate_foreground(
                        frame.image, previous.alpha, device=getattr(predictor, "device", "cpu")
                    )
                    foreground = colour_estimation.foreground_to_uint8(colours)
                if backdrop_frame is not None and needs_composite and foreground is not None:
                    composite = composite_over(foreground, to_uint8(levels), backdrop_frame)
                slots.acquire()
                future = writer.submit(
                    _write,
                    outputs,
                    encoders,
                    frame,
                    None if replay else trimap,
                    levels,
                    foreground,
                    composite,
                )
                future.add_done_callback(lambda _: slots.release())
                if replay:
                    report.skipped.append(label)
                else:
                    writes.append((label, future))
                if progress is not None:
                    progress(frame.index)
    finally:
        reader.close()
    for label, future in writes:
        error = future.exception()
        if error is None:
            report.done.append(label)
        else:
            report.fail(label, f"cannot write its outputs: {error}")
    _finish_videos(encoders, report, source.name)
    return report


def _predict(predictor: ImagePredictor, image: np.ndarray, trimap: np.ndarray) -> BatchPrediction:
    """The image predictor on one frame (a batch of one)."""
    # [H, W, 3] -> [1, 3, H, W] and [H, W] -> [1, 1, H, W], as views
    return predictor.predict_levels(image.transpose(2, 0, 1)[None], trimap[None, None])


def _write(
    outputs: ClipOutputs,
    encoders: dict[str, VideoEncoder],
    frame: Frame,
    trimap: np.ndarray | None,
    levels: np.ndarray,
    foreground: np.ndarray | None,
    composite: np.ndarray | None,
) -> None:
    """The writer thread's work for one frame: its files (unless replayed: ``trimap`` None),
    then its frame of each video."""
    if trimap is not None:
        outputs.write(frame.name, levels, trimap, foreground, composite)
    for kind, encoder in encoders.items():
        if kind == "composite":
            array = composite
        elif VIDEO_KINDS[kind].needs_foreground:
            array = np.dstack([foreground, to_uint8(levels)])
        else:
            array = levels if encoder.deep else to_uint8(levels)
        encoder.put(array, frame.pts, frame.time_base)


def _finish_videos(encoders: dict[str, VideoEncoder], report: Summary, clip: str) -> None:
    """Close the videos of a clip whose frames all succeeded; abandon them otherwise."""
    for kind, encoder in encoders.items():
        if report.failed:
            encoder.abort()
            logger.warning("%s: no %s video: some frames failed", clip, kind)
            continue
        try:
            encoder.close()
        except OSError as exc:
            report.fail(encoder.path, str(exc))
