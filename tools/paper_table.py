"""Reproduce the paper's table: SAD, MSE, Grad and Conn of each model on Composition-1k,
Distinctions-646, AIM-500 and UHR-395, with peak memory and time per image, and the run's
metadata (commit, configs and checkpoints with their SHA-256, device, cap, precision):

    python tools/paper_table.py \\
        --model configs/MEMatte_S_topk0.25_win_global_long.py MEMatte_ViTS_DIM.pth \\
        --model configs/MEMatte_B_topk0.25_win_global_long.py MEMatte_ViTB_DIM.pth \\
        --composition-1k datasets/Composition-1k --aim-500 datasets/AIM-500 \\
        --output-dir output/paper_table

writes ``OUT/table.md`` (and ``.csv``, ``.json``) to set beside the README's model zoo. Every
number is ``inference.py``'s predictions scored by ``tools/evaluate.py``'s code; the folders
each test set needs, the cells and how memory and time are measured: ``evaluation/paper_table.py``,
``evaluation/cells.py`` and ``docs/evaluation.md``. Resumable (finished pairs are not computed
again) and sharded like inference (``--num-gpus N`` or ``torchrun``).

Exit status: 0 every pair done; 1 some images could not be predicted or evaluated (their pairs
are left unfinished and out of the table); 2 usage or setup error (a missing file or folder, a
test set without ground truth, an output folder holding results of other parameters).
"""

import argparse
import logging
import runpy
import sys
from functools import partial
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from evaluation.cells import EXIT_USAGE, check_cells, check_test_set, run_cells
from evaluation.grid import add_run_arguments, run_options
from evaluation.paper_table import (
    add_paper_table_arguments,
    paper_cells,
    paper_models,
    paper_test_sets,
    run_metadata,
    write_paper_table,
)
from utils.arguments import add_device_arguments, add_trust_checkpoint_argument

logger = logging.getLogger("paper_table")


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_paper_table_arguments(parser)
    add_trust_checkpoint_argument(parser)
    add_device_arguments(parser)
    add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the table; return the exit status of the module docstring."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    try:
        options = run_options(args)
        test_sets = paper_test_sets(args, args.region)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        models = paper_models(args.model)
        for test_set in test_sets:
            check_test_set(test_set)
        cells = paper_cells(models, test_sets, args.max_number_token, args.output_dir)
        check_cells(cells, options)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    metadata = run_metadata(models, test_sets, options, args.max_number_token)
    finish = partial(write_paper_table, output_dir=args.output_dir, metadata=metadata)
    return run_cells(cells, options, finish=finish)


if __name__ == "__main__":
    sys.exit(main())
