"""Evaluating folders of clips (``tools/evaluate.py`` on clip folders): per clip, the image
metrics of every frame (SAD, MSE, Grad, Conn: the official DIM definitions of
:mod:`evaluation.metrics`, paper units) averaged over its frames, and its dtSSD
(:mod:`evaluation.dtssd`: the mean over its frames, 0 for the first); overall, the mean of each
over the clips (every clip counts once, as the VideoMatte240K and VideoMatting108 evaluations
average their clips).

Clips are found in the layouts of :func:`data.clips.clip_folders` (``ROOT/<clip>/pha/``,
``ROOT/pha/<clip>/`` or ``ROOT/<clip>/``), predictions, labels and trimaps each in its own;
frames are matched by stem, a clip's frames are the label's, in frame order. Files are read as
the image evaluator reads them (8-bit levels, 16-bit values rounded), except that an RGBA label
gives its alpha channel (VideoMatting108's ``FG_done`` frames carry the alpha there). Without
trimaps the metrics cover the whole frame (``region="all"``); dtSSD always does.

A label clip without a prediction clip, or a label frame without its predicted frame (or
trimap), is an error naming them, unless ``allow_missing``; a clip with an unreadable frame or
mismatched sizes is reported and left out of the mean.
"""

from __future__ import annotations

import csv
import io
import logging
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data.clips import clip_folders, list_frames
from data.image_io import BadSampleError, read_map_u8, trimap_levels
from evaluation.dtssd import dtssd
from evaluation.folders import CSV_FLOAT_FORMAT, MissingFilesError, _listed
from evaluation.metrics import METRIC_NAMES, Region, compute_metrics
from utils.file_io import atomic_write
from utils.levels import UINT8_MAX

__all__ = [
    "CLIP_METRICS",
    "ClipFrames",
    "ClipResult",
    "evaluate_clip",
    "evaluate_clips",
    "format_clip_table",
    "is_clip_folder",
    "match_clips",
    "mean_over_clips",
    "read_label_u8",
    "write_clip_csv",
]

logger = logging.getLogger(__name__)

CLIP_METRICS = (*METRIC_NAMES, "dtssd")
# An RGBA image: its alpha channel is the label.
RGBA_CHANNELS = 4
CLIP_TABLE_HEADER = (
    f"{'clip':<24} {'frames':>6} {'SAD(/1e3)':>10} {'MSE(x1e3)':>10} {'Grad(/1e3)':>10} "
    f"{'Conn(/1e3)':>10} {'dtSSD(x1e2)':>11}"
)
CLIP_TABLE_ROW = (
    "{name:<24} {frames:>6} {sad:>10.4f} {mse:>10.4f} {grad:>10.4f} {conn:>10.4f} {dtssd:>11.4f}"
)


@dataclass(frozen=True)
class ClipFrames:
    """The files of one clip's frames, in frame order (``trimaps`` empty without trimaps)."""

    preds: tuple[Path, ...]
    labels: tuple[Path, ...]
    trimaps: tuple[Path, ...] = ()


@dataclass
class ClipResult:
    """A clip's mean metrics over its frames and its per-frame values, or an error."""

    name: str
    frames: int = 0
    frame_names: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    per_frame: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None


def is_clip_folder(pred_dir: str | Path) -> bool:
    """Whether a prediction folder holds clips (sub-folders and no image of its own)."""
    folder = Path(pred_dir)
    return folder.is_dir() and not list_frames(folder) and bool(clip_folders(folder))


def _frames_by_stem(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in list_frames(folder)}


def match_clips(
    pred_dir: Path, label_dir: Path, trimap_dir: Path | None = None, *, allow_missing: bool = False
) -> dict[str, ClipFrames]:
    """Match clips by name and their frames by stem (see the module docstring).

    Raises:
        FileNotFoundError: a folder does not exist.
        MissingFilesError: (without ``allow_missing``) missing clips or frames, listed.
        ValueError: nothing to evaluate.
    """
    preds, labels = clip_folders(pred_dir), clip_folders(label_dir)
    trimaps = clip_folders(trimap_dir) if trimap_dir is not None else None
    missing = [_listed(labels.keys() - preds.keys(), f"clips missing in {pred_dir}")]
    if trimaps is not None:
        missing.append(_listed(labels.keys() - trimaps.keys(), f"clips missing in {trimap_dir}"))
    extra = _listed(preds.keys() - labels.keys(), "predicted clips without label")
    if extra:
        logger.warning("%s (left out)", extra)
    matched = {}
    for name in sorted(labels.keys() & preds.keys()):
        if trimaps is not None and name not in trimaps:
            continue
        label_frames = _frames_by_stem(labels[name])
        pred_frames = _frames_by_stem(preds[name])
        trimap_frames = _frames_by_stem(trimaps[name]) if trimaps is not None else None
        lacking = label_frames.keys() - pred_frames.keys()
        missing.append(_listed(lacking, f"frames of clip {name} missing in {preds[name]}"))
        if trimap_frames is not None:
            lacking |= label_frames.keys() - trimap_frames.keys()
            text = f"frames of clip {name} without trimap in {trimaps[name]}"
            missing.append(_listed(label_frames.keys() - trimap_frames.keys(), text))
        stems = [stem for stem in label_frames if stem not in lacking]
        if stems:
            matched[name] = ClipFrames(
                tuple(pred_frames[s] for s in stems),
                tuple(label_frames[s] for s in stems),
                tuple(trimap_frames[s] for s in stems) if trimap_frames is not None else (),
            )
    missing = [message for message in missing if message]
    if missing and not allow_missing:
        raise MissingFilesError(
            "; ".join(missing) + ". The means would cover fewer frames: complete the folders, "
            "or pass --allow-missing to evaluate the others knowingly"
        )
    for message in missing:
        logger.warning("%s (--allow-missing: evaluating the others)", message)
    if not matched:
        raise ValueError(f"nothing to evaluate: no common clip in {pred_dir} and {label_dir}")
    return matched


def read_label_u8(path: Path) -> np.ndarray:
    """A label frame as 8-bit levels: the alpha channel of an RGBA PNG, else the map
    (:func:`data.image_io.read_map_u8`)."""
    raw = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is not None and raw.ndim == 3 and raw.shape[2] == RGBA_CHANNELS:
        alpha = raw[:, :, RGBA_CHANNELS - 1]
        if alpha.dtype == np.uint16:
            return np.round(alpha / (np.iinfo(np.uint16).max / UINT8_MAX)).astype(np.uint8)
        return alpha
    return read_map_u8(path)


def evaluate_clip(
    name: str, frames: ClipFrames, region: Region, snap_trimap: bool = False
) -> ClipResult:
    """Read one clip's frames in order and compute its metrics; errors are captured. Trimap
    frames with values other than 0, 128 and 255 fail the clip, or are snapped to the nearest
    level with ``snap_trimap`` (the policy of ``evaluation.folders`` and ``inference.py``)."""
    result = ClipResult(name)
    previous = None
    try:
        for index, (pred_path, label_path) in enumerate(zip(frames.preds, frames.labels)):
            pred, label = read_map_u8(pred_path), read_label_u8(label_path)
            trimap = read_map_u8(frames.trimaps[index]) if frames.trimaps else None
            sizes = {p: a.shape for p, a in ((pred_path, pred), (label_path, label))}
            if trimap is not None:
                sizes[frames.trimaps[index]] = trimap.shape
            if len(set(sizes.values())) > 1:
                listing = ", ".join(f"{p} {s[1]}x{s[0]}" for p, s in sizes.items())
                raise ValueError(f"size mismatch (WxH): {listing}")
            if trimap is not None:
                trimap = trimap_levels(trimap, frames.trimaps[index], snap=snap_trimap)
            values = compute_metrics(pred, label, trimap, region=region)
            pred_unit, label_unit = pred / UINT8_MAX, label / UINT8_MAX
            if previous is None:
                values["dtssd"] = 0.0
            else:
                values["dtssd"] = dtssd(pred_unit, previous[0], label_unit, previous[1])
            previous = (pred_unit, label_unit)
            result.per_frame.append(values)
            result.frame_names.append(label_path.stem)
    except (BadSampleError, ValueError, TypeError) as exc:
        result.error = str(exc)
        return result
    result.frames = len(result.per_frame)
    result.metrics = {
        key: float(np.mean([values[key] for values in result.per_frame])) for key in CLIP_METRICS
    }
    return result


def evaluate_clips(
    clips: dict[str, ClipFrames],
    region: Region,
    workers: int = 1,
    progress: bool = False,
    snap_trimap: bool = False,
) -> tuple[list[ClipResult], dict[str, str]]:
    """Evaluate every clip (in ``workers`` processes, trimaps snapped with ``snap_trimap``);
    returns the results of the clips that were evaluated and ``{clip: error}`` for the others
    (logged)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    names = list(clips)
    with ExitStack() as stack:
        mapper = map
        if workers > 1:
            mapper = stack.enter_context(ProcessPoolExecutor(min(workers, len(names)))).map
        outcomes = mapper(
            evaluate_clip,
            names,
            clips.values(),
            [region] * len(names),
            [snap_trimap] * len(names),
        )
        results = list(
            tqdm(outcomes, total=len(names), desc="evaluate", unit="clip", disable=not progress)
        )
    failures = {}
    for result in results:
        if result.error is not None:
            logger.error("clip %s: skipped: %s", result.name, result.error)
            failures[result.name] = result.error
    return [r for r in results if r.error is None], failures


def mean_over_clips(results: list[ClipResult]) -> dict[str, float]:
    """Each metric's mean over the clips (each clip's own mean over its frames)."""
    return {key: float(np.mean([r.metrics[key] for r in results])) for key in CLIP_METRICS}


def format_clip_table(results: list[ClipResult], region: Region) -> str:
    """Per-clip and overall means as a text table, the units in the header."""
    where = "unknown region (trimap == 128)" if region == "unknown" else "whole frame"
    lines = [
        f"Per clip: the mean over its frames ({where}; dtSSD over the whole frame, 0 for the "
        "first); overall: the mean over the clips",
        CLIP_TABLE_HEADER,
    ]
    for result in results:
        lines.append(
            CLIP_TABLE_ROW.format(name=result.name, frames=result.frames, **result.metrics)
        )
    total = sum(result.frames for result in results)
    overall = mean_over_clips(results)
    lines.append(
        CLIP_TABLE_ROW.format(name=f"mean of {len(results)} clips", frames=total, **overall)
    )
    return "\n".join(lines)


def write_clip_csv(path: Path, results: list[ClipResult]) -> None:
    """Per-frame metrics of every clip (``clip, frame, sad, mse, grad, conn, dtssd``), written
    atomically."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["clip", "frame", *CLIP_METRICS])
    for result in results:
        for frame, values in zip(result.frame_names, result.per_frame):
            row = [CSV_FLOAT_FORMAT.format(values[key]) for key in CLIP_METRICS]
            writer.writerow([result.name, frame, *row])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: file.write(text.getvalue().encode("utf-8")))
