"""Time and peak memory against image size, from ``tools/benchmark.py --json`` results.

One PNG with two panels (wall time and peak memory against megapixels), one line per
(variant, mode, backend, device, precision) found in the results; failed runs are left out.
The README's benchmark plot is made this way::

    python tools/benchmark.py --modes predictor --unknown 0.1 --sizes 512 1024 2048 4096 \\
        --variants mematte vitmatte --warmup 0 --repeats 1 --json output/sweep.json
    python tools/plot_benchmark.py output/sweep.json --output docs/benchmark_sizes.png
"""

from __future__ import annotations

import argparse
import json
import logging
import runpy
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
from matplotlib.ticker import ScalarFormatter

runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "_bootstrap.py"))

from utils.file_io import atomic_write

logger = logging.getLogger("plot_benchmark")

SCHEMA = "mematte-benchmark/1"
MEGAPIXEL = 1e6
MIB_PER_GIB = 1024
FIGURE_SIZE_IN = (10, 4)
DPI = 100
LINE_KEYS = ("variant", "mode", "backend", "device", "precision")


def load_results(paths: list[Path]) -> list[dict]:
    """The successful results of benchmark JSON files.

    Raises:
        ValueError: a file that is not a ``tools/benchmark.py`` result file (named).
    """
    results = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a tools/benchmark.py result file (schema {SCHEMA})")
        results += [r for r in record["results"] if r.get("status") == "ok"]
    return results


def line_label(result: dict) -> str:
    """The legend entry of a result's line, e.g. ``mematte S, predictor, 10 % unknown``."""
    parts = [f"{result['variant']} {result['model']}", result.get("mode", "forward")]
    if result.get("mode") == "predictor":
        parts.append(f"{result['unknown']:.0%} unknown")
    if result.get("backend", "torch") != "torch":
        parts.append(result["backend"])
    parts.append(f"{result['device']} {result['precision']}")
    return ", ".join(parts)


def plot(results: list[dict], title: str) -> plt.Figure:
    """Two panels: wall time (s, log scale) and peak memory (GiB) against megapixels (log
    scale), one line per configuration, points sorted by size."""
    lines: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for result in results:
        height, width = result["size"]
        lines[line_label(result)].append(
            (
                height * width / MEGAPIXEL,
                result["time_s"]["median"],
                result["memory_mib"]["peak"] / MIB_PER_GIB,
            )
        )
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=FIGURE_SIZE_IN)
    for label, points in sorted(lines.items()):
        points.sort()
        megapixels = [p[0] for p in points]
        time_axis.plot(megapixels, [p[1] for p in points], marker="o", label=label)
        memory_axis.plot(megapixels, [p[2] for p in points], marker="o", label=label)
    time_axis.set_yscale("log")  # times span orders of magnitude; memory does not
    memory_axis.set_ylim(bottom=0)
    for axis, ylabel in ((time_axis, "wall time (s)"), (memory_axis, "peak memory (GiB)")):
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlabel("image size (megapixels)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", type=Path, help="tools/benchmark.py --json files")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="MEMatte inference, time and memory against size")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; 0 on success, 2 on unusable input."""
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        results = load_results(args.results)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    if not results:
        logger.error("no successful results in %s", ", ".join(map(str, args.results)))
        return 2
    figure = plot(results, args.title)
    atomic_write(args.output, lambda file: figure.savefig(file, format="png", dpi=DPI))
    plt.close(figure)
    logger.info("wrote %s (%d results)", args.output, len(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
