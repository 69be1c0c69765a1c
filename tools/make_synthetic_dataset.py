"""Write a small synthetic matting dataset: DIM training layout and Composition-1k test layout
(:mod:`data.synthetic_dataset`).

Foregrounds are procedural: soft-edged blobs, hair-like anti-aliased strands and semi-transparent
veils over a smooth colour field; backgrounds are gradients, noise or stripes. Nothing is
downloaded, and the same arguments give byte-identical files: running the tool again with the same
arguments finds the dataset in place and writes nothing; other arguments over an existing dataset
need ``--overwrite``.

Output::

    OUT/train/fg/fg_000.png ...      foreground colours (RGB, alpha-free)
    OUT/train/alpha/fg_000.png ...   alpha mattes (8-bit)
    OUT/train/bg/bg_000.jpg ...      backgrounds
    OUT/test/merged/test_000.png ... composites
    OUT/test/trimaps/test_000.png    trimaps {0, 128, 255} from the alpha by erosion
    OUT/test/alpha_copy/test_000.png ground-truth alphas

Usage::

    python tools/make_synthetic_dataset.py --out datasets/synthetic --seed 0
"""

import argparse
import logging
import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from data.synthetic_dataset import make_synthetic_dataset

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-fg", type=int, default=12, help="training foregrounds")
    parser.add_argument("--num-bg", type=int, default=24, help="training backgrounds")
    parser.add_argument("--num-test", type=int, default=6, help="test images")
    parser.add_argument("--size", type=int, default=256, help="nominal image side (px)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset made with other arguments (the same arguments write nothing)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Write the dataset (exit status 2: another dataset is in the way)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        make_synthetic_dataset(
            args.out,
            args.seed,
            num_fg=args.num_fg,
            num_bg=args.num_bg,
            num_test=args.num_test,
            size=args.size,
            overwrite=args.overwrite,
        )
    except FileExistsError as error:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
