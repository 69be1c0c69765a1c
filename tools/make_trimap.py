"""Trimaps from a folder of masks: unknown within a band around each mask's boundary.

    python tools/make_trimap.py --masks DIR --out DIR --width 20
    python tools/make_trimap.py --masks DIR --out DIR --width 0.02         # of the shorter side
    python tools/make_trimap.py --masks GT --out Trimap --random-width 5 30 --seed 0

Each mask (8- or 16-bit gray; a soft mask or an alpha matte is thresholded at half its range)
becomes ``OUT/<name>.png`` (0 background, 128 unknown, 255 foreground) by
``data.trimap.trimap_from_mask``: a pixel is unknown when it lies within the width (Euclidean,
px) of the mask boundary, on either side.

``--random-width A B --seed S`` draws each image's width among the integers A..B, from the seed
and the file name only (the Distinctions-646 test protocol makes its trimaps with a random
kernel per image): the same arguments give the same trimaps, whatever the order or the subset of
the files. The widths are logged.

Exit status: 0 every mask done; 1 some mask failed (named; the others are written); 2 usage
error (no mask folder, an output path that is a file).
"""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
import zlib
from pathlib import Path

import numpy as np

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from data.image_io import BadSampleError, list_images, read_map_levels, write_image
from data.trimap import trimap_from_mask, unknown_width_argument

logger = logging.getLogger("make_trimap")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def image_width(name: str, low: int, high: int, seed: int) -> int:
    """The width of image ``name`` under ``--random-width low high --seed seed``: uniform among
    the integers ``low..high``, drawn from the seed and the name only (stable across runs)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    return int(rng.integers(low, high + 1))


def make_trimaps(
    masks: Path,
    out: Path,
    width: float | None = None,
    random_width: tuple[int, int] | None = None,
    seed: int = 0,
) -> list[tuple[Path, str]]:
    """Write the trimap of every mask of ``masks`` into ``out``.

    Args:
        masks: folder of mask images.
        out: output folder (created).
        width: the unknown band's width on each side, in px or as a fraction of the shorter side.
        random_width: ``(low, high)``: a width per image (:func:`image_width`) instead.
        seed: seed of the random widths.

    Returns:
        the masks that failed, with the reason.
    """
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for path in list_images(masks):
        if random_width is None:
            unknown_width = width
        else:
            unknown_width = image_width(path.stem, *random_width, seed)
        try:
            trimap = trimap_from_mask(read_map_levels(path), unknown_width, source=str(path))
            write_image(out / f"{path.stem}.png", trimap)
        except (BadSampleError, ValueError, OSError) as exc:
            logger.error("failed: %s: %s", path, exc)
            failed.append((path, str(exc)))
            continue
        logger.info("%s: width %s", path.name, unknown_width)
    return failed


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--masks", type=Path, required=True, help="folder of masks")
    parser.add_argument("--out", type=Path, required=True, help="folder the trimaps go to")
    widths = parser.add_mutually_exclusive_group(required=True)
    widths.add_argument(
        "--width",
        type=unknown_width_argument,
        metavar="W",
        help="unknown band on each side of the boundary: px (e.g. 20), a fraction of the "
        "shorter side (e.g. 0.02) or auto (relative to each mask's size, as inference.py)",
    )
    widths.add_argument(
        "--random-width",
        type=int,
        nargs=2,
        metavar=("A", "B"),
        help="a width per image, among the integers A..B px, from --seed and the file name",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-width")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if args.random_width is not None and not 0 <= args.random_width[0] <= args.random_width[1]:
        parser.error("--random-width A B needs 0 <= A <= B")
    if not args.masks.is_dir():
        logger.error("mask folder %s does not exist", args.masks)
        return EXIT_USAGE
    if args.out.exists() and not args.out.is_dir():
        logger.error("output folder %s is a file", args.out)
        return EXIT_USAGE
    failed = make_trimaps(args.masks, args.out, args.width, args.random_width, args.seed)
    if failed:
        logger.error("%d masks failed (see above); the others are written", len(failed))
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
