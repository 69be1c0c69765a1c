"""Build a composited matting set from a release: Composition-1k (the Adobe Deep Image Matting
test set over PASCAL VOC 2012), the DIM training set over MS COCO, Distinctions-646's test split.

With a preset and the release's root folder (the Adobe release's ``Combined_Dataset``, the
Distinctions-646 folder), only the backgrounds and the output are left to give:

    python tools/compose_dataset.py --preset composition-1k \\
        --release-dir datasets/Combined_Dataset \\
        --bg-dir datasets/VOCdevkit/VOC2012/JPEGImages --output-dir datasets/Composition-1k

Without a preset every input is given (``--fg-dir`` and ``--alpha-dir`` take several folders,
searched in order, as the DIM training set's two):

    python tools/compose_dataset.py --fg-dir FG --alpha-dir ALPHA [--trimap-dir TRIMAPS] \\
        --fg-names fg_names.txt --bg-names bg_names.txt --bg-dir BG --num-bgs 20 \\
        --output-dir OUT

Explicit options override a preset's. Output: ``OUT/merged/<stem>_<k>.png`` (composites),
``OUT/alpha_copy/``, ``OUT/trimaps/`` (with trimaps), ``OUT/fg/``, ``OUT/bg/`` (the pieces of each
composite) and ``OUT/manifest.json`` (parameters and the SHA-256 of every file). The rules are in
``data/composition.py``, the presets and checks in ``data/composition_plan.py``, the resumable
build in ``data/composition_build.py``; the layouts of the releases in ``docs/data.md``.

Every listed file is checked before anything is written; a build that stops resumes where it
stopped when run again with the same options. Exit status: 0 built (or already complete); 1 bad
data (a listed file missing or unreadable, sizes that differ, too few backgrounds: nothing
written) or composites that failed; 2 bad arguments (a folder or list that does not exist, an
output folder holding something else).
"""

import argparse
import logging
import os
import runpy
import sys
from pathlib import Path

from tqdm import tqdm

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from data.composition import RESIZE_FILTERS
from data.composition_build import build
from data.composition_plan import PRESETS, BuildSpec, DataError, SetupError, check_setup, plan_build

logger = logging.getLogger("compose_dataset")

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a release's defaults: its number of backgrounds per foreground and, with "
        "--release-dir, its folders and lists",
    )
    parser.add_argument(
        "--release-dir", type=Path, metavar="DIR", help="with --preset: the release's root folder"
    )
    parser.add_argument("--fg-dir", type=Path, nargs="+", metavar="DIR", help="foregrounds")
    parser.add_argument(
        "--alpha-dir", type=Path, nargs="+", metavar="DIR", help="alpha mattes, named as the fgs"
    )
    parser.add_argument(
        "--trimap-dir",
        type=Path,
        metavar="DIR",
        help="trimaps, per foreground (<stem>.png) or per composite (<stem>_<k>.png)",
    )
    parser.add_argument("--fg-names", type=Path, metavar="FILE", help="the foreground list")
    parser.add_argument("--bg-names", type=Path, metavar="FILE", help="the background list")
    parser.add_argument("--bg-dir", type=Path, metavar="DIR", help="the background photos")
    parser.add_argument("--num-bgs", type=int, metavar="N", help="backgrounds per foreground")
    parser.add_argument(
        "--resize",
        choices=RESIZE_FILTERS,
        help="the bicubic filter that enlarges backgrounds smaller than their foreground: opencv "
        "(cv2.INTER_CUBIC, the float32 Composition-1k script the matting repositories use) or pil "
        "(PIL's BICUBIC: Adobe's original script, Distinctions-646's). Default: the preset's "
        "(pil for distinctions-646), else opencv",
    )
    parser.add_argument("--output-dir", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help="processes composing foregrounds in parallel (1: in this process)",
    )
    return parser


def spec_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BuildSpec:
    """The build the options describe: the preset's defaults, overridden by explicit options
    (usage errors exit with status 2)."""
    if args.release_dir is not None and args.preset is None:
        parser.error("--release-dir goes with --preset")
    values = {}
    if args.preset is not None:
        preset = PRESETS[args.preset]
        values["num_bgs"] = preset.num_bgs
        values["optional_bg_prefix"] = preset.optional_bg_prefix
        values["resize"] = preset.resize
        if args.release_dir is not None:
            values.update(preset.release_paths(args.release_dir))
    explicit = {
        "fg_dirs": tuple(args.fg_dir) if args.fg_dir else None,
        "alpha_dirs": tuple(args.alpha_dir) if args.alpha_dir else None,
        "trimap_dir": args.trimap_dir,
        "fg_names": args.fg_names,
        "bg_names": args.bg_names,
        "bg_dir": args.bg_dir,
        "num_bgs": args.num_bgs,
        "resize": args.resize,
    }
    values.update({key: value for key, value in explicit.items() if value is not None})
    values.setdefault("trimap_dir", None)
    flags = {
        "fg_dirs": "--fg-dir",
        "alpha_dirs": "--alpha-dir",
        "fg_names": "--fg-names",
        "bg_names": "--bg-names",
        "bg_dir": "--bg-dir",
        "num_bgs": "--num-bgs",
    }
    missing = [flag for key, flag in flags.items() if key not in values]
    if missing:
        if args.preset is None:
            hint = " (or --preset with --release-dir)"
        else:
            hint = f" ({args.preset}'s backgrounds: {PRESETS[args.preset].backgrounds})"
        parser.error(f"missing {', '.join(missing)}{hint}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return BuildSpec(output_dir=args.output_dir, **values)


def main(argv: list[str] | None = None) -> int:
    """Check, then build; return the exit status of the module docstring."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    spec = spec_from_args(parser, args)
    try:
        check_setup(spec)
    except SetupError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    try:
        jobs = plan_build(spec)
    except DataError as exc:
        logger.error("%s", exc)
        return EXIT_DATA
    count = sum(len(job.composites) for job in jobs)
    logger.info("%d foregrounds, %d composites into %s", len(jobs), count, spec.output_dir)
    result = build(
        spec,
        jobs,
        workers=args.workers,
        progress=lambda results: tqdm(results, total=len(jobs), desc="compose", unit="fg"),
    )
    logger.info(
        "written %d, already present %d, failed %d",
        result.written,
        result.skipped,
        len(result.failed),
    )
    return EXIT_DATA if result.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
