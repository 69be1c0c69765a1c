"""Evaluating folders of predicted alpha mattes against ground truth: files matched by stem, each
image's SAD, MSE, Grad and Conn (the official DIM MATLAB definitions, :mod:`evaluation.metrics`) in
paper units, their means, the per-image CSV and the printed table. ``tools/evaluate.py`` is the
command line.

Files are matched by stem: predictions are ``*.png``; labels and trimaps may be in any format the
readers take (``data.image_io.IMAGE_EXTENSIONS``; ``.png`` preferred, then ``.jpg``, on a stem
clash). Every other entry of the three folders is named in a warning, with the reason. A label
without a prediction (or without a trimap, or a trimap without a label) is an error naming the
files, since the mean would silently cover fewer images, unless ``allow_missing``. Extra
predictions are reported and left out. Files are read as 8-bit single-channel maps by
``data.image_io.read_map_u8`` (16-bit values become ``round(v / 257)``). An image is reported and
left out of the mean when one of its files cannot be read or is truncated, is a colour image, when
its sizes differ, when its trimap holds values other than 0, 128 and 255 (a JPEG trimap:
``snap_trimap`` moves each value to the nearest level instead, as ``inference.py`` does with the
same option), or when its label looks like a trimap (only 0, 128 and 255, with 128: label and
trimap folders swapped?).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.image_io import IMAGE_EXTENSIONS, BadSampleError, read_map_u8, trimap_levels
from data.trimap import TRIMAP_LEVELS, TRIMAP_UNKNOWN, non_trimap_share
from evaluation.metrics import METRIC_NAMES, Region, compute_metrics
from utils.file_io import atomic_write
from utils.progress import logging_above_progress_bar

logger = logging.getLogger(__name__)

PRED_SUFFIXES: tuple[str, ...] = (".png",)


LABEL_SUFFIXES: tuple[str, ...] = IMAGE_EXTENSIONS  # preferred first on a stem clash


CSV_FLOAT_FORMAT = "{:.10g}"


MAX_NAMES_LOGGED = 10  # longer lists of unmatched names are abbreviated in messages


# Each header says how the printed number comes from the official value (paper units).
TABLE_HEADER = f"{'SAD(/1e3)':>10} {'MSE(x1e3)':>12} {'Grad(/1e3)':>12} {'Conn(/1e3)':>12}"


TABLE_ROW = "{sad:>10.4f} {mse:>12.4f} {grad:>12.4f} {conn:>12.4f}"


EXIT_OK = 0


EXIT_FAILURE = 1


EXIT_USAGE = 2


class MissingFilesError(ValueError):
    """Labels without prediction or trimap (or trimaps without label): an incomplete set."""


class CsvPathError(ValueError):
    """A ``--csv`` path that cannot be written."""


@dataclass(frozen=True)
class ItemPaths:
    """The three files of one evaluated image."""

    pred: Path
    label: Path
    trimap: Path


@dataclass
class ItemResult:
    """Outcome of evaluating one image: metrics (paper units) or an error."""

    name: str
    metrics: dict[str, float] | None = None
    error: str | None = None


def _index_dir(folder: Path, suffixes: tuple[str, ...], kind: str) -> dict[str, Path]:
    """Map stem -> file for files in ``folder`` whose suffix is in ``suffixes``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{kind} directory not found: {folder}")
    found: dict[str, Path] = {}
    not_read = []
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if not path.is_file() or suffix not in suffixes or path.name.startswith("."):
            not_read.append(path.name + ("/" if path.is_dir() else ""))
            continue
        previous = found.get(path.stem)
        if previous is None:
            found[path.stem] = path
            continue
        keep = min(previous, path, key=lambda p: suffixes.index(p.suffix.lower()))
        logger.warning(
            "%s: several files for %r (%s, %s); using %s",
            kind,
            path.stem,
            previous.name,
            path.name,
            keep.name,
        )
        found[path.stem] = keep
    listed = _listed(not_read, f"entries of {folder} not read (only {' '.join(suffixes)} files)")
    if listed:
        logger.warning("%s: %s", kind, listed)
    return found


def _listed(names: Iterable[str], message: str) -> str | None:
    """``"<n> <message>: a, b, ..."`` (abbreviated), or None without names."""
    names = sorted(names)
    if not names:
        return None
    shown = ", ".join(names[:MAX_NAMES_LOGGED])
    if len(names) > MAX_NAMES_LOGGED:
        shown += f" and {len(names) - MAX_NAMES_LOGGED} more"
    return f"{len(names)} {message}: {shown}"


def match_files(
    pred_dir: Path, label_dir: Path, trimap_dir: Path, *, allow_missing: bool = False
) -> dict[str, ItemPaths]:
    """Match predictions, labels and trimaps by file stem.

    Predictions without label and trimap are logged as warnings and left out.

    Args:
        pred_dir: folder of predicted alpha PNGs.
        label_dir: folder of ground-truth alpha mattes (``LABEL_SUFFIXES``).
        trimap_dir: folder of trimaps (``LABEL_SUFFIXES``).
        allow_missing: only warn about labels without prediction or trimap and trimaps without
            label, and evaluate the names present in all three folders.

    Returns:
        ``{name: ItemPaths}`` sorted by name.

    Raises:
        FileNotFoundError: a folder does not exist.
        MissingFilesError: (without ``allow_missing``) names missing in a folder, listed.
        ValueError: no name is present in all three folders.
    """
    preds = _index_dir(Path(pred_dir), PRED_SUFFIXES, "predictions")
    labels = _index_dir(Path(label_dir), LABEL_SUFFIXES, "labels")
    trimaps = _index_dir(Path(trimap_dir), LABEL_SUFFIXES, "trimaps")
    references = labels.keys() & trimaps.keys()
    extra = _listed(preds.keys() - references, "extra predictions without label and trimap")
    if extra:
        logger.warning("%s (left out)", extra)
    missing = [
        _listed(references - preds.keys(), f"predictions missing in {pred_dir}"),
        _listed(labels.keys() - trimaps.keys(), f"labels without trimap in {trimap_dir}"),
        _listed(trimaps.keys() - labels.keys(), f"trimaps without label in {label_dir}"),
    ]
    missing = [message for message in missing if message]
    if missing and not allow_missing:
        raise MissingFilesError(
            "; ".join(missing) + ". The mean would cover fewer images: complete the folders, or "
            "pass --allow-missing to evaluate the others knowingly"
        )
    for message in missing:
        logger.warning("%s (--allow-missing: evaluating the others)", message)
    names = sorted(references & preds.keys())
    if not names:
        raise ValueError(
            f"nothing to evaluate: no common file stem in {pred_dir}, {label_dir}, {trimap_dir}"
        )
    return {name: ItemPaths(preds[name], labels[name], trimaps[name]) for name in names}


def evaluate_item(
    name: str, paths: ItemPaths, region: Region, snap_trimap: bool = False
) -> ItemResult:
    """Read one image triple and compute its metrics; errors are captured, not raised.

    Args:
        name: image name (file stem).
        paths: its prediction, label and trimap files.
        region: ``"unknown"`` or ``"all"`` (see `evaluation.metrics`).
        snap_trimap: move trimap values other than 0, 128 and 255 to the nearest of them
            (:func:`data.trimap.snap_trimap`) instead of failing the image.

    Returns:
        The result with paper-unit metrics, or with ``error`` set.
    """
    result = ItemResult(name)
    try:
        pred, label, trimap = (read_map_u8(p) for p in (paths.pred, paths.label, paths.trimap))
        shapes = {paths.pred: pred.shape, paths.label: label.shape, paths.trimap: trimap.shape}
        if len(set(shapes.values())) > 1:
            sizes = ", ".join(f"{path} {shape[1]}x{shape[0]}" for path, shape in shapes.items())
            raise ValueError(f"size mismatch (WxH): {sizes}")
        _check_label(paths, label)
        trimap = trimap_levels(trimap, paths.trimap, snap=snap_trimap)
        result.metrics = compute_metrics(pred, label, trimap, region=region)
    except (BadSampleError, ValueError, TypeError) as exc:
        result.error = str(exc)
    return result


def _check_label(paths: ItemPaths, label: np.ndarray) -> None:
    """A label with only the values 0, 128 and 255 (with 128) is a trimap.

    Raises:
        ValueError: naming the file.
    """
    if (label == TRIMAP_UNKNOWN).any() and not non_trimap_share(label):
        raise ValueError(
            f"{paths.label}: only the values {TRIMAP_LEVELS}: a trimap, not an alpha matte "
            "(label and trimap folders swapped?)"
        )


def evaluate_items(
    items: dict[str, ItemPaths],
    region: Region = "unknown",
    workers: int = 1,
    progress: bool = False,
    snap_trimap: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Compute the metrics of every item, in parallel processes when ``workers > 1``.

    Args:
        items: ``{name: ItemPaths}`` as `match_files` returns.
        region: ``"unknown"`` or ``"all"``.
        workers: number of processes; 1 runs in this process.
        progress: show a tqdm progress bar (log lines, the workers' too, go above it).
        snap_trimap: see :func:`evaluate_item`.

    Returns:
        ``(per_image, failures)``: ``{name: {"sad", "mse", "grad", "conn"}}`` in paper units
        for the images that were evaluated, and ``{name: error message}`` for the others (also
        logged as errors).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    names = list(items)
    with ExitStack() as stack:
        forward_logs = stack.enter_context(logging_above_progress_bar())
        if workers == 1:
            mapper = map
        else:
            pool = ProcessPoolExecutor(
                max_workers=min(workers, len(names)), initializer=forward_logs
            )
            mapper = stack.enter_context(pool).map
        each = [region] * len(names), [snap_trimap] * len(names)
        outcomes = mapper(evaluate_item, names, items.values(), *each)
        bar = tqdm(outcomes, total=len(names), desc="evaluate", unit="img", disable=not progress)
        results = list(bar)

    per_image: dict[str, dict[str, float]] = {}
    failures: dict[str, str] = {}
    for result in results:
        if result.error is not None:
            logger.error("%s: skipped: %s", result.name, result.error)
            failures[result.name] = result.error
        else:
            per_image[result.name] = result.metrics
    return per_image, failures


def mean_metrics(per_image: dict[str, dict[str, float]]) -> dict[str, float]:
    """Plain mean over images of each metric (paper units), as benchmark tables report.

    An image with an empty region has MSE NaN (official 0 / 0), which makes the mean MSE NaN
    as in ``evaluate.m``; such images are logged.

    Args:
        per_image: ``{name: {"sad", "mse", "grad", "conn"}}``.

    Returns:
        ``{"sad", "mse", "grad", "conn"}`` means (NaN for every key if ``per_image`` is empty).
    """
    nan_mse = [name for name, values in per_image.items() if math.isnan(values["mse"])]
    message = _listed(nan_mse, "images without unknown pixel (MSE is NaN, so is its mean)")
    if message:
        logger.warning("%s", message)
    if not per_image:
        return {name: math.nan for name in METRIC_NAMES}
    return {
        name: float(np.mean([values[name] for values in per_image.values()]))
        for name in METRIC_NAMES
    }


def write_csv(path: Path, per_image: dict[str, dict[str, float]]) -> None:
    """Write per-image metrics (paper units) to a CSV file with a header row, atomically.

    Args:
        path: output file (parent folders are created).
        per_image: ``{name: {"sad", "mse", "grad", "conn"}}``.
    """
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["name", *METRIC_NAMES])
    for name, values in per_image.items():
        writer.writerow([name, *(CSV_FLOAT_FORMAT.format(values[m]) for m in METRIC_NAMES)])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: file.write(text.getvalue().encode("utf-8")))


def format_table(mean: dict[str, float], num_images: int, region: Region) -> str:
    """Mean metrics as a small text table with the units in the header.

    Args:
        mean: ``{"sad", "mse", "grad", "conn"}`` in paper units.
        num_images: number of images averaged.
        region: region the metrics were computed on.

    Returns:
        Multi-line string.
    """
    where = "unknown region (trimap == 128)" if region == "unknown" else "whole image"
    lines = [
        f"Mean over {num_images} images, {where}, in paper units (each column: the official "
        "value scaled as its header says): SAD = sum|d_alpha| / 1e3, MSE = mean(d_alpha^2) x "
        "1e3, Grad = sum / 1e3, Conn = sum / 1e3",
        TABLE_HEADER,
        TABLE_ROW.format(**mean),
    ]
    return "\n".join(lines)


def check_csv_path(path: Path) -> None:
    """An output CSV must be creatable: not a folder, in a folder that exists or can be made
    and is writable.

    Raises:
        CsvPathError: naming the path and the problem.
    """
    if path.is_dir():
        raise CsvPathError(f"--csv {path} is a folder")
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CsvPathError(f"--csv {path}: {existing} is not a writable folder")
