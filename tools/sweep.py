"""Sweep token caps and trimaps: inference and evaluation of one model on one test set over a grid,
then a table (CSV, Markdown) and a plot of SAD, MSE, Grad, Conn, peak memory and time per image.

Token caps (the paper's memory / quality trade-off) against the metrics, with the test set's
trimaps and trimaps re-derived from the ground truth with unknown bands of several widths:

    python tools/sweep.py --config-file configs/tiny/MEMatte_tiny_synthetic.py \\
        --checkpoint pretrained/demo/MEMatte_tiny_synthetic.pth --data-dir demo \\
        --caps 32 128 0.25 --trimaps released 5 15 --device cpu --output-dir output/sweep_demo

Caps: integers (tokens per global attention and image), ratios of each image's tokens (0.25)
or ``config``. Trimaps: ``released`` and band widths in px. Each grid point is a folder under
``OUT/cells/`` with its predictions (as ``inference.py`` writes them), per-image metrics and a
``result.json`` written last; a finished point is not computed again, so an interrupted sweep
resumes, and adding caps or widths computes only the new points. The metrics are those of
``tools/evaluate.py`` on the folders each ``result.json`` names (by default the test set's
trimaps define the evaluated region, whatever the trimaps fed: ``--eval-trimaps input`` evaluates
on each point's own). Sharded like inference: ``--num-gpus N`` or ``torchrun``. The layout of the
output, how memory and time are measured: ``evaluation/cells.py``, ``evaluation/sweep.py`` and
``docs/evaluation.md``.

Exit status: 0 every point done; 1 some images could not be predicted or evaluated (their points
are left unfinished, reported by name, and the other points go on); 2 usage or setup error (a
missing file or folder, a test set without ground truth, an output folder holding points of other
parameters).
"""

import argparse
import logging
import runpy
import sys
from functools import partial
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from evaluation.cells import EXIT_USAGE, check_cells, check_test_set, run_cells
from evaluation.grid import DatasetSpec, add_run_arguments, model_spec, run_options
from evaluation.sweep import add_sweep_arguments, sweep_cells, write_sweep_tables
from utils.arguments import add_model_arguments

logger = logging.getLogger("sweep")


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    add_sweep_arguments(parser)
    add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; return the exit status of the module docstring."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    try:
        options = run_options(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        model = model_spec(
            Path(args.config_file), Path(args.checkpoint), Path(args.checkpoint).stem
        )
        root = args.data_dir.resolve()
        test_set = DatasetSpec(root.name, root, args.layout, args.region)
        check_test_set(test_set)
        cells = sweep_cells(
            model,
            test_set,
            args.caps,
            args.trimaps,
            args.output_dir,
            eval_on_input=args.eval_trimaps == "input",
        )
        check_cells(cells, options)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    title = f"{model.label} on {test_set.name}: token caps and trimaps"
    finish = partial(write_sweep_tables, output_dir=args.output_dir, title=title)
    return run_cells(cells, options, finish=finish)


if __name__ == "__main__":
    sys.exit(main())
