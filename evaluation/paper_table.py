"""The paper's table, reproduced: SAD, MSE, Grad and Conn of each model on the test sets of
Composition-1k, Distinctions-646, AIM-500 and UHR-395, with the peak memory and the time per
image, and the run's metadata beside it (commit, configs and checkpoints with their SHA-256,
device, token cap, precision). ``tools/paper_table.py`` is the command line.

Each (model, test set) pair is a cell of :mod:`evaluation.cells` with the test set's trimaps, so
every number comes from ``inference.py``'s predictions and ``tools/evaluate.py``'s metrics.
The test sets are read by ``data.readers`` (files matched by stem):

================== ==================================== =================================
test set           folders                              made by
================== ==================================== =================================
composition-1k     ``merged/ trimaps/ alpha_copy/``     ``tools/compose_dataset.py
                                                        --preset composition-1k``
distinctions-646   ``Image/ Trimap/ GT/``, or the       ``tools/compose_dataset.py
                   Composition-1k folders               --preset distinctions-646`` (and
                                                        trimaps: the release has none)
aim-500            ``original/ trimap/ mask/``          the AIM-500 release
uhr-395            ``merged/ trimaps/ alpha_copy/``     UHRIM's test set (UHR-395)
================== ==================================== =================================

Output folder::

    OUT/cells/<model>/<test set>/   one cell per pair (predictions, per-image metrics, result)
    OUT/table.json                  {"schema", "metadata", "rows"}
    OUT/table.csv, OUT/table.md     one row per pair; the Markdown lists the metadata below
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import subprocess
import sys
from pathlib import Path

import torch

from engine.config import LazyConfig
from evaluation.cells import load_result
from evaluation.grid import (
    Cell,
    DatasetSpec,
    ModelSpec,
    RunOptions,
    TokenCap,
    TrimapVariant,
    model_spec,
    parse_token_cap,
)
from evaluation.tables import csv_text, markdown_table, result_row, write_text
from utils.benchmark import cpu_name
from utils.device import resolve_device

__all__ = [
    "TEST_SETS",
    "add_paper_table_arguments",
    "paper_cells",
    "paper_models",
    "paper_test_sets",
    "run_metadata",
    "write_paper_table",
]

logger = logging.getLogger(__name__)

SCHEMA = "mematte-paper-table/1"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Test sets of the paper, in its order, and the data.readers layout of each (None: detected).
TEST_SETS = {
    "composition-1k": "composition-1k",
    "distinctions-646": None,
    "aim-500": "aim-500",
    "uhr-395": "uhrim",
}
CELLS_DIR, TABLE_NAME = "cells", "table"
LEADING_COLUMNS = ("model", "test_set")
GIT_TIMEOUT_S = 10


def add_paper_table_arguments(parser: argparse.ArgumentParser) -> None:
    """The models, the test sets and the cap."""
    parser.add_argument(
        "--model",
        nargs=2,
        action="append",
        required=True,
        metavar=("CONFIG", "CHECKPOINT"),
        help="a config and its checkpoint (repeat for several models)",
    )
    for name in TEST_SETS:
        parser.add_argument(
            f"--{name}", type=Path, metavar="DIR", help=f"the {name} test set's folder"
        )
    parser.add_argument(
        "--max-number-token",
        type=parse_token_cap,
        default=TokenCap(),
        metavar="CAP",
        help="token cap: an integer, a ratio of each image's tokens (0.25) or 'config' (the "
        "config's, 18500 as official; the default)",
    )


def paper_models(pairs: list[tuple[str, str]]) -> list[ModelSpec]:
    """The models of ``--model`` pairs, labelled by checkpoint file stem (numbered where two
    share one), their files hashed.

    Raises:
        FileNotFoundError: a file that does not exist.
    """
    models, seen = [], {}
    for config, checkpoint in pairs:
        stem = Path(checkpoint).stem
        seen[stem] = seen.get(stem, 0) + 1
        label = stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"
        models.append(model_spec(Path(config), Path(checkpoint), label))
    return models


def paper_test_sets(args: argparse.Namespace, region: str) -> list[DatasetSpec]:
    """The test sets given on the command line, in the paper's order.

    Raises:
        ValueError: none given.
    """
    specs = []
    for name, layout in TEST_SETS.items():
        root = getattr(args, name.replace("-", "_"))
        if root is not None:
            specs.append(DatasetSpec(name, Path(root).resolve(), layout, region))
    if not specs:
        flags = ", ".join(f"--{name}" for name in TEST_SETS)
        raise ValueError(f"no test set: give at least one of {flags}")
    return specs


def paper_cells(
    models: list[ModelSpec], test_sets: list[DatasetSpec], cap: TokenCap, output_dir: Path
) -> list[Cell]:
    """One cell per (model, test set), with the test sets' trimaps."""
    return [
        Cell(
            model=model,
            test_set=test_set,
            cap=cap,
            trimap=TrimapVariant(),
            folder=output_dir / CELLS_DIR / model.label / test_set.name,
            trimap_root=output_dir / CELLS_DIR / model.label,
        )
        for model in models
        for test_set in test_sets
    ]


def _git(*arguments: str) -> str | None:
    """The output of a git command in the repository, None where git or the repository is
    missing."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *arguments],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def run_metadata(
    models: list[ModelSpec],
    test_sets: list[DatasetSpec],
    options: RunOptions,
    cap: TokenCap,
) -> dict:
    """What a reader needs to compare the table with others: the code, the models, the data,
    the device and the settings."""
    device = resolve_device(options.device)
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
        "argv": sys.argv,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "models": [
            {
                "label": model.label,
                "config": str(model.config_file),
                "config_sha256": model.config_sha256,
                "checkpoint": str(model.checkpoint),
                "checkpoint_sha256": model.checkpoint_sha256,
                "config_cap": LazyConfig.apply_overrides(
                    LazyConfig.load(str(model.config_file)), list(options.overrides)
                ).model.backbone.max_number_token,
            }
            for model in models
        ],
        "test_sets": [
            {"name": t.name, "root": str(t.root), "layout": t.layout, "region": t.region}
            for t in test_sets
        ],
        "device": str(device),
        "device_name": _device_name(device),
        "processes": options.num_gpus,
        "cap": cap.label,
        "precision": options.precision,
        "patch_decoder": options.patch_decoder,
        "batch_size": options.batch_size,
        "overrides": list(options.overrides),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _metadata_markdown(metadata: dict) -> str:
    lines = [
        "",
        f"- commit: `{metadata['git_commit']}`" + (" (modified)" if metadata["git_dirty"] else ""),
        f"- created: {metadata['created']}",
        f"- device: {metadata['device']} ({metadata['device_name']}), "
        f"{metadata['processes']} process(es)",
        f"- token cap: {metadata['cap']}, precision: {metadata['precision']}, "
        f"patch decoder: {metadata['patch_decoder']}, batch size: {metadata['batch_size']}",
        f"- torch {metadata['torch']}, Python {metadata['python']}",
    ]
    if metadata["overrides"]:
        lines.append(f"- config overrides: {' '.join(metadata['overrides'])}")
    for model in metadata["models"]:
        lines.append(
            f"- {model['label']}: config `{model['config']}` (sha256 {model['config_sha256']}, "
            f"cap {model['config_cap']}), checkpoint `{model['checkpoint']}` "
            f"(sha256 {model['checkpoint_sha256']})"
        )
    for test_set in metadata["test_sets"]:
        lines.append(
            f"- {test_set['name']}: `{test_set['root']}` (layout {test_set['layout'] or 'detected'}"
            f", region {test_set['region']})"
        )
    return "\n".join(lines) + "\n"


def write_paper_table(cells: list[Cell], *, output_dir: Path, metadata: dict) -> list[dict]:
    """Write ``table.json``, ``table.csv`` and ``table.md`` of the finished cells.

    Returns:
        the table's rows.
    """
    rows = []
    for cell in cells:
        record = load_result(cell.result_path)
        if record is not None:
            keys = {"model": cell.model.label, "test_set": cell.test_set.name}
            rows.append(result_row(record, keys))
    if not rows:
        logger.warning("no finished cell: no table written")
        return rows
    report = {"schema": SCHEMA, "metadata": metadata, "rows": rows}
    write_text(output_dir / f"{TABLE_NAME}.json", json.dumps(report, indent=2) + "\n")
    write_text(output_dir / f"{TABLE_NAME}.csv", csv_text(rows))
    markdown = markdown_table(rows, LEADING_COLUMNS) + _metadata_markdown(metadata)
    write_text(output_dir / f"{TABLE_NAME}.md", markdown)
    logger.info("wrote %s.json, .csv and .md in %s", TABLE_NAME, output_dir)
    return rows
