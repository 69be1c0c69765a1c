"""Building a composited matting set from a release, as :mod:`data.composition_plan` plans it:
every composite follows :mod:`data.composition`, in the layout ``inference.py`` and
``tools/evaluate.py`` read, plus the pieces of each composite::

    OUT/merged/<stem>_<k>.png       composites (RGB)
    OUT/alpha_copy/<stem>_<k>.png   their alpha matte: a copy of the foreground's (re-encoded as
                                    a one-channel PNG where the release stores it as JPEG)
    OUT/trimaps/<stem>_<k>.png      their trimap, copied the same way (only with trimaps)
    OUT/fg/<stem>_<k>.png           the foreground colours (RGB)
    OUT/bg/<stem>_<k>.png           the background as composited: enlarged and cropped (RGB)
    OUT/manifest.json               parameters, software versions, and the SHA-256 of every file

Foregrounds, backgrounds and alpha mattes are decoded without EXIF rotation, as PIL reads them in
the released scripts (``data.image_io.read_rgb_levels``); an alpha matte stored as a colour image
gives its first channel, as Adobe's script reads it.

The build is resumable: a composite whose files are all present and complete is not computed
again (the files are written atomically, the composite last, so a killed build leaves nothing
half-written; the temporary files of its interrupted writes are removed). The foregrounds are
shared out to worker processes. A composite that fails (an image that does not decode) is reported
and the others go on. ``tools/compose_dataset.py`` is the command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import PIL

from data.composition import compose
from data.composition_plan import (
    ALPHA_DIR,
    BG_DIR,
    FG_DIR,
    MANIFEST,
    MERGED_DIR,
    SCHEMA,
    TRIMAP_DIR,
    BuildSpec,
    CompositeJob,
    ForegroundJob,
)
from data.image_io import (
    BadSampleError,
    encode_image,
    is_complete_image,
    read_rgb_levels,
    read_trimap_levels,
)
from utils.file_io import atomic_write, remove_stale_temporaries

__all__ = ["BuildResult", "build", "run_job"]

logger = logging.getLogger(__name__)

# Any file name with the suffix: what encode_image reads the format from.
_PNG_NAME = "composite.png"


@dataclass
class BuildResult:
    """What a build (or one worker's share) did."""

    written: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)  # {"composite", "path", "reason"}
    entries: list[dict] = field(default_factory=list)  # the manifest's composites


# --- the build ---------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(job: ForegroundJob, composite: CompositeJob, files: dict[str, str]) -> dict:
    """The manifest's record of a composite."""
    return {
        "name": composite.name,
        "foreground": job.fg_name,
        "background": composite.bg_name,
        "k": composite.k,
        "files": files,
    }


def _failure(composite: CompositeJob, path: Path, reason: str) -> dict[str, str]:
    """The record of a composite that could not be written."""
    return {"composite": composite.name, "path": str(path), "reason": reason}


def _rgb8(path: Path) -> np.ndarray:
    """An 8-bit RGB image as the released scripts' PIL reads it (no EXIF rotation)."""
    image = read_rgb_levels(path)
    if image.dtype != np.uint8:
        raise BadSampleError(path, f"{image.dtype} pixels: the composition takes 8-bit images")
    return image


def _alpha8(path: Path) -> np.ndarray:
    """An alpha matte's 8-bit levels: a gray file as is, a colour file's first channel."""
    return _rgb8(path)[:, :, 0]


def _write(root: Path, relative: str, data: bytes) -> None:
    atomic_write(root / relative, lambda file: file.write(data))


def _png(image: np.ndarray) -> bytes:
    """PNG bytes of ``[H, W]`` levels or an ``[H, W, 3]`` RGB image."""
    if image.ndim == 3:
        image = image[:, :, ::-1]  # RGB -> BGR for OpenCV
    return encode_image(_PNG_NAME, image)


def _copy_as_png(path: Path, levels: np.ndarray) -> bytes:
    """A release's map as a PNG: the file itself when it is one (a copy, as the releases' users
    make ``alpha_copy``), else its decoded levels encoded."""
    return path.read_bytes() if path.suffix.lower() == ".png" else _png(levels)


def run_job(job: ForegroundJob) -> BuildResult:
    """Write the composites of one foreground that are not complete yet (in a worker process).

    Returns:
        the composites written and skipped, their manifest records, and the failures.
    """
    result = BuildResult()
    root = job.output_dir
    pending = []
    for composite in job.composites:
        files = job.outputs(composite)
        if all(is_complete_image(root / f) for f in files):
            hashes = {f: _sha256((root / f).read_bytes()) for f in files}
            result.entries.append(_entry(job, composite, hashes))
            result.skipped += 1
        else:
            pending.append(composite)
    if not pending:
        return result
    try:
        foreground, alpha = _rgb8(job.foreground), _alpha8(job.alpha)
        if alpha.shape != foreground.shape[:2]:
            raise BadSampleError(job.alpha, "size differs from the foreground's")
    except BadSampleError as exc:
        result.failed += [_failure(c, exc.path, exc.reason) for c in pending]
        return result
    shared = {FG_DIR: _png(foreground), ALPHA_DIR: _copy_as_png(job.alpha, alpha)}
    trimaps: dict[Path, bytes] = {}
    for composite in pending:
        try:
            encoded = dict(shared)
            if composite.trimap is not None:
                if composite.trimap not in trimaps:
                    levels = read_trimap_levels(composite.trimap)
                    if levels.shape != alpha.shape:
                        raise BadSampleError(composite.trimap, "size differs from the alpha's")
                    trimaps[composite.trimap] = _copy_as_png(composite.trimap, levels)
                encoded[TRIMAP_DIR] = trimaps[composite.trimap]
            image, background = compose(foreground, alpha, _rgb8(composite.background), job.resize)
            encoded[BG_DIR], encoded[MERGED_DIR] = _png(background), _png(image)
            files = {}
            for relative in job.outputs(composite):  # the composite last
                data = encoded[relative.split("/")[0]]
                _write(root, relative, data)
                files[relative] = _sha256(data)
        except BadSampleError as exc:
            result.failed.append(_failure(composite, exc.path, exc.reason))
            continue
        except OSError as exc:  # a write
            result.failed.append(_failure(composite, root, str(exc)))
            continue
        result.entries.append(_entry(job, composite, files))
        result.written += 1
    return result


def _manifest(spec: BuildSpec, complete: bool, entries: list[dict]) -> dict:
    return {
        "schema": SCHEMA,
        "complete": complete,
        "parameters": spec.parameters(),
        "rules": {
            "backgrounds": "in list order, num_bgs per foreground",
            "enlarge": f"bicubic ({spec.resize}) to ceil(side * max side ratio), top-left crop",
            "blend": "float32 a * fg + (1 - a) * bg, a = alpha / 255, truncated to uint8",
        },
        "software": {"numpy": np.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__},
        "composites": entries,
    }


def _write_manifest(spec: BuildSpec, complete: bool, entries: list[dict]) -> None:
    text = json.dumps(_manifest(spec, complete, entries), indent=1) + "\n"
    _write(spec.output_dir, MANIFEST, text.encode("utf-8"))


def _results(jobs: list[ForegroundJob], workers: int) -> Iterator[BuildResult]:
    """The jobs' results in order, from ``workers`` processes (1: this process)."""
    if workers == 1:
        yield from map(run_job, jobs)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        yield from pool.map(run_job, jobs)


def build(
    spec: BuildSpec,
    jobs: list[ForegroundJob],
    workers: int = 1,
    progress: Callable[[Iterator[BuildResult]], Iterator[BuildResult]] | None = None,
) -> BuildResult:
    """Write the composites of ``jobs`` that are missing, then the manifest.

    Args:
        spec: the build (its parameters go into the manifest).
        jobs: :func:`plan_build`'s list.
        workers: processes (1: in this process).
        progress: wraps the iterator of results (a tqdm), or None.

    Returns:
        the counts, the failures and the manifest's records of the whole build.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    folders = [MERGED_DIR, ALPHA_DIR, FG_DIR, BG_DIR]
    if spec.trimap_dir is not None:
        folders.append(TRIMAP_DIR)
    for folder in folders:
        (spec.output_dir / folder).mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(spec.output_dir / folder):
            logger.info("removed %s, left by a build that was stopped", stale)
    _write_manifest(spec, complete=False, entries=[])
    total = BuildResult()
    results = _results(jobs, workers)
    for result in progress(results) if progress else results:
        total.written += result.written
        total.skipped += result.skipped
        total.failed += result.failed
        total.entries += result.entries
        for failure in result.failed:
            logger.error(
                "%s not written: %s: %s", failure["composite"], failure["path"], failure["reason"]
            )
    _write_manifest(spec, complete=not total.failed, entries=total.entries)
    return total
