"""The tables of a grid's results (``evaluation.cells``): rows of the mean metrics, peak memory and
time per image, written as CSV (full precision) and Markdown (the metrics with the four decimals
``tools/evaluate.py`` prints), atomically.

Metrics are in paper units: SAD / 1e3, MSE x 1e3, Grad / 1e3, Conn / 1e3.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from evaluation.folders import CSV_FLOAT_FORMAT
from evaluation.metrics import METRIC_NAMES
from utils.file_io import atomic_write
from utils.memory import MIB

__all__ = ["METRIC_HEADERS", "csv_text", "markdown_table", "result_row", "write_text"]

# Markdown headers of the metrics, with the scaling of their values.
METRIC_HEADERS = {
    "sad": "SAD (/1e3)",
    "mse": "MSE (x1e3)",
    "grad": "Grad (/1e3)",
    "conn": "Conn (/1e3)",
}
METRIC_DECIMALS = 4  # as tools/evaluate.py prints them
MEMORY_DECIMALS = 0
SECONDS_DECIMALS = 4


def result_row(record: dict, keys: dict[str, str]) -> dict:
    """One table row of a cell's ``result.json``: the given leading columns, the metrics, the
    number of images, peak memory (MiB), time per image (s) and the folders evaluated.

    Args:
        record: the cell's result.
        keys: leading column name -> its value (e.g. ``{"cap": "0.25"}``).
    """
    peak = record["peak_memory_bytes"]
    return {
        **keys,
        **{name: record["metrics"][name] for name in METRIC_NAMES},
        "images": record["num_images"],
        "peak_memory_mib": peak / MIB if peak is not None else None,
        "seconds_per_image": record["seconds_per_image"],
        **{f"eval_{k}": v for k, v in record["evaluation"].items()},
    }


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    return CSV_FLOAT_FORMAT.format(value) if isinstance(value, float) else str(value)


def csv_text(rows: Sequence[dict]) -> str:
    """The rows as CSV with a header (floats with ``evaluation.folders.CSV_FLOAT_FORMAT``)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    columns = list(rows[0]) if rows else []
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row[column]) for column in columns])
    return text.getvalue()


def _cell(value: object, decimals: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{decimals}f}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[dict], leading: Sequence[str]) -> str:
    """The rows as a Markdown table: the ``leading`` columns, the metrics, images, peak memory
    and time per image."""
    headers = [*leading, *METRIC_HEADERS.values(), "images", "peak memory (MiB)", "s / image"]
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for row in rows:
        values = [str(row[key]) for key in leading]
        values += [_cell(row[name], METRIC_DECIMALS) for name in METRIC_NAMES]
        values += [
            str(row["images"]),
            _cell(row["peak_memory_mib"], MEMORY_DECIMALS),
            _cell(row["seconds_per_image"], SECONDS_DECIMALS),
        ]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))
