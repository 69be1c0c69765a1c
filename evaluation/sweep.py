"""Sweeps over token caps and trimaps: one model on one test set, a grid of
:mod:`evaluation.cells` (every cap with every trimap variant), and its table (CSV, Markdown) and
plot. ``tools/sweep.py`` is the command line.

Output folder::

    OUT/cells/cap-<cap>_trimap-<variant>/   one cell per grid point (evaluation.cells)
    OUT/trimaps/band<w>/<name>.png          trimaps re-derived from the ground truth
    OUT/sweep.csv, OUT/sweep.md             one row per cell, in grid order (caps, then trimaps)
    OUT/sweep.png                           SAD, peak memory and time per image against the cap,
                                            one line per trimap variant
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt

from evaluation.cells import load_result
from evaluation.grid import (
    Cell,
    DatasetSpec,
    ModelSpec,
    TokenCap,
    TrimapVariant,
    parse_token_cap,
    parse_trimap_variant,
)
from evaluation.tables import METRIC_HEADERS, csv_text, markdown_table, result_row, write_text
from utils.file_io import atomic_write

__all__ = ["add_sweep_arguments", "sweep_cells", "write_sweep_tables"]

logger = logging.getLogger(__name__)

CELLS_DIR, TRIMAPS_DIR = "cells", "trimaps"
TABLE_NAME = "sweep"
LEADING_COLUMNS = ("cap", "trimap")
FIGURE_SIZE_IN = (13, 4)
DPI = 100


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The grid's options: the test set, the caps, the trimap variants, the evaluated region."""
    parser.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help="a test set")
    parser.add_argument("--layout", help="its layout (default: detected, see docs/data.md)")
    parser.add_argument(
        "--caps",
        nargs="+",
        type=parse_token_cap,
        default=[TokenCap()],
        metavar="CAP",
        help="token caps: integers (tokens per global attention), ratios of each image's tokens "
        "(0.25) or 'config' (the config's cap, the default)",
    )
    parser.add_argument(
        "--trimaps",
        nargs="+",
        type=parse_trimap_variant,
        default=[TrimapVariant()],
        metavar="T",
        help="'released' (the test set's trimaps, the default) and unknown-band widths in px: "
        "trimaps re-derived from the ground truth, unknown within W px of fractional alpha",
    )
    parser.add_argument(
        "--eval-trimaps",
        choices=("released", "input"),
        default="released",
        help="the unknown region evaluated: the test set's trimaps (the benchmark's region, the "
        "default) or the trimaps each cell feeds",
    )


def sweep_cells(
    model: ModelSpec,
    test_set: DatasetSpec,
    caps: list[TokenCap],
    trimaps: list[TrimapVariant],
    output_dir: Path,
    eval_on_input: bool = False,
) -> list[Cell]:
    """The grid: every cap with every trimap variant, caps outermost, duplicates dropped."""
    cells: dict[tuple[str, str], Cell] = {}
    for cap in caps:
        for trimap in trimaps:
            key = (cap.label, trimap.label)
            cells.setdefault(
                key,
                Cell(
                    model=model,
                    test_set=test_set,
                    cap=cap,
                    trimap=trimap,
                    folder=output_dir / CELLS_DIR / f"cap-{cap.label}_trimap-{trimap.label}",
                    trimap_root=output_dir / TRIMAPS_DIR,
                    eval_on_input=eval_on_input,
                ),
            )
    return list(cells.values())


def _rows(cells: list[Cell]) -> list[dict]:
    rows = []
    for cell in cells:
        record = load_result(cell.result_path)
        if record is not None:
            rows.append(result_row(record, {"cap": cell.cap.label, "trimap": cell.trimap.label}))
    return rows


def _plot(rows: list[dict], title: str) -> plt.Figure:
    """SAD, peak memory and time per image against the cap (in grid order), one line per
    trimap variant."""
    caps = list(dict.fromkeys(row["cap"] for row in rows))
    panels = (
        ("sad", METRIC_HEADERS["sad"]),
        ("peak_memory_mib", "peak memory (MiB)"),
        ("seconds_per_image", "time per image (s)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=FIGURE_SIZE_IN)
    for trimap in dict.fromkeys(row["trimap"] for row in rows):
        points = [row for row in rows if row["trimap"] == trimap]
        positions = [caps.index(row["cap"]) for row in points]
        for axis, (key, _) in zip(axes, panels):
            values = [row[key] if row[key] is not None else float("nan") for row in points]
            axis.plot(positions, values, marker="o", label=f"trimaps: {trimap}")
    for axis, (_, ylabel) in zip(axes, panels):
        axis.set_xticks(range(len(caps)), caps)
        axis.set_xlabel("token cap (tokens, or a ratio of each image's)")
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def write_sweep_tables(cells: list[Cell], *, output_dir: Path, title: str) -> list[dict]:
    """Write ``sweep.csv``, ``sweep.md`` and ``sweep.png`` of the finished cells.

    Returns:
        the table's rows (none when no cell has finished).
    """
    rows = _rows(cells)
    if not rows:
        logger.warning("no finished cell: no table written")
        return rows
    write_text(output_dir / f"{TABLE_NAME}.csv", csv_text(rows))
    write_text(output_dir / f"{TABLE_NAME}.md", markdown_table(rows, LEADING_COLUMNS))
    figure = _plot(rows, title)
    png = output_dir / f"{TABLE_NAME}.png"
    atomic_write(png, lambda file: figure.savefig(file, format="png", dpi=DPI))
    plt.close(figure)
    logger.info("wrote %s.csv, .md and .png in %s", TABLE_NAME, output_dir)
    return rows
