"""Evaluate predicted alpha mattes against ground truth: SAD, MSE, Grad, Conn in paper units.

References: Deep Image Matting evaluation protocol (official MATLAB `evaluate.m`), see
`evaluation/metrics.py`; the matching and reading rules are in `evaluation/folders.py`.

Usage:
    python tools/evaluate.py --pred-dir P --label-dir L --trimap-dir T \
        [--region unknown|all] [--workers N] [--csv per_image.csv] [--allow-missing] \
        [--snap-trimap]
    python tools/evaluate.py --pred-dir OUT --label-dir L [--trimap-dir T]   # clips

Clips: a prediction folder of clip folders (as ``inference.py --video`` writes them,
``OUT/<clip>/pha/<frame>.png``) is evaluated clip by clip against labels in the VideoMatte240K or
VideoMatting108 layouts (``L/<clip>/pha/``, ``L/pha/<clip>/`` or ``L/<clip>/``; frames matched by
name): per clip and overall, the image metrics averaged over the frames and dtSSD (whole frame,
x100, 0 for the first frame). Without ``--trimap-dir`` the metrics cover the whole frame. The
rules are in ``evaluation/clips.py``; ``--csv`` gets one row per frame.

Files are matched by stem: predictions are ``*.png``; labels and trimaps may be in any format
inference.py reads (.png, .jpg, .webp, .tif, ...); every other file is named in a warning. A label
without a prediction (or without a trimap, or a trimap without a label) is an error naming the
files, since the mean would silently cover fewer images; pass ``--allow-missing`` to evaluate a
partial run knowingly. Extra predictions are reported and left out. Files are read as 8-bit
single-channel maps by ``data.image_io.read_map_u8`` (16-bit values become ``round(v / 257)``). An
image is reported and left out of the mean when one of its files cannot be read or is truncated, is
a colour image, when its sizes differ, when its trimap holds values other than 0, 128 and 255 (a
JPEG trimap: --snap-trimap moves each value to the nearest level, 0..63 -> 0, 64..191 -> 128,
192..255 -> 255, as inference.py does with the same option), or when its label looks like a
trimap (only 0, 128 and 255, with 128: label and trimap folders
swapped?).

The results table is printed first, then the per-image CSV is written (``--csv``; an unwritable
path is reported before any work). Exit status: 0 every image evaluated; 1 some image failed or
is missing; 2 usage or setup error (a folder that does not exist, an unwritable CSV path).
The same for clips (a clip that fails counts as a failed image).
"""

import argparse
import logging
import os
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from data.trimap import add_snap_trimap_argument
from evaluation.clips import (
    evaluate_clips,
    format_clip_table,
    is_clip_folder,
    match_clips,
    write_clip_csv,
)
from evaluation.folders import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CsvPathError,
    check_csv_path,
    evaluate_items,
    format_table,
    match_files,
    mean_metrics,
    write_csv,
)
from evaluation.metrics import Region

logger = logging.getLogger(__name__)


def _matched(
    match: Callable[..., list],
    pred_dir: Path,
    label_dir: Path,
    trimap_dir: Path | None,
    csv_path: Path | None,
    allow_missing: bool,
) -> list | int:
    """The CSV path checked, then ``match``'s predictions paired with their labels (images or
    clips); or the exit status of what stopped it (2: a usage error, 1: missing files or
    nothing to evaluate), logged."""
    try:
        if csv_path is not None:
            check_csv_path(csv_path)
        return match(pred_dir, label_dir, trimap_dir, allow_missing=allow_missing)
    except (FileNotFoundError, CsvPathError) as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    except ValueError as exc:  # missing files, clips or frames, or nothing to evaluate
        logger.error("%s", exc)
        return EXIT_FAILURE


def run(
    pred_dir: Path,
    label_dir: Path,
    trimap_dir: Path,
    region: Region,
    workers: int,
    csv_path: Path | None,
    allow_missing: bool = False,
    snap_trimap: bool = False,
) -> int:
    """Evaluate, print the mean table, then write the CSV; return the exit status."""
    items = _matched(match_files, pred_dir, label_dir, trimap_dir, csv_path, allow_missing)
    if isinstance(items, int):
        return items
    per_image, failures = evaluate_items(
        items, region=region, workers=workers, progress=True, snap_trimap=snap_trimap
    )
    if not per_image:
        logger.error("no image could be evaluated")
        return EXIT_FAILURE
    print(format_table(mean_metrics(per_image), len(per_image), region), flush=True)
    if csv_path is not None:
        write_csv(csv_path, per_image)
        logger.info("wrote per-image metrics to %s", csv_path)
    if failures:
        logger.error(
            "%d of %d images failed (see errors above) and are not in the mean",
            len(failures),
            len(items),
        )
        return EXIT_FAILURE
    return EXIT_OK


def run_clips(
    pred_dir: Path,
    label_dir: Path,
    trimap_dir: Path | None,
    region: Region,
    workers: int,
    csv_path: Path | None,
    allow_missing: bool = False,
    snap_trimap: bool = False,
) -> int:
    """Evaluate folders of clips, print the per-clip table, then write the CSV; return the exit
    status."""
    clips = _matched(match_clips, pred_dir, label_dir, trimap_dir, csv_path, allow_missing)
    if isinstance(clips, int):
        return clips
    results, failures = evaluate_clips(
        clips, region, workers=workers, progress=True, snap_trimap=snap_trimap
    )
    if not results:
        logger.error("no clip could be evaluated")
        return EXIT_FAILURE
    print(format_clip_table(results, region), flush=True)
    if csv_path is not None:
        write_clip_csv(csv_path, results)
        logger.info("wrote per-frame metrics to %s", csv_path)
    if failures:
        logger.error(
            "%d of %d clips failed (see errors above), not in the mean", len(failures), len(clips)
        )
        return EXIT_FAILURE
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pred-dir", type=Path, required=True, help="predicted alpha PNGs")
    parser.add_argument("--label-dir", type=Path, required=True, help="ground-truth alphas")
    parser.add_argument(
        "--trimap-dir",
        type=Path,
        help="trimaps (128 = unknown); required for images, optional for clips",
    )
    parser.add_argument(
        "--region",
        choices=("unknown", "all"),
        help="pixels summed: trimap == 128 (Composition-1k; the default with trimaps) or whole "
        "image (the default for clips without --trimap-dir)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes (1 = in-process)",
    )
    parser.add_argument("--csv", type=Path, default=None, help="write per-image metrics here")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="evaluate a partial run: labels without prediction (or trimap) are warnings",
    )
    add_snap_trimap_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Evaluate; exit with the status of the module docstring."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    region = args.region or ("unknown" if args.trimap_dir is not None else "all")
    if region == "unknown" and args.trimap_dir is None:
        parser.error("--region unknown needs --trimap-dir")
    if is_clip_folder(args.pred_dir):
        evaluate = run_clips
    elif args.trimap_dir is None:
        parser.error("--trimap-dir is required for images (clips: a folder of clip folders)")
    else:
        evaluate = run
    sys.exit(
        evaluate(
            args.pred_dir,
            args.label_dir,
            args.trimap_dir,
            region,
            args.workers,
            args.csv,
            allow_missing=args.allow_missing,
            snap_trimap=args.snap_trimap,
        )
    )


if __name__ == "__main__":
    main()
