"""One cell of an evaluation grid: a model on a test set with one token cap and one trimap, from
the predictions to the metrics (the cell, its cap and trimaps are described in
:mod:`evaluation.grid`). ``evaluation.sweep`` (``tools/sweep.py``) and ``evaluation.paper_table``
(``tools/paper_table.py``) run grids of cells.

A cell is a folder::

    <cell>/pred/<name>.png   the predicted alphas, written by predictor.runner as inference.py
                             writes them (the official truncated 8-bit PNGs)
    <cell>/per_image.csv     the metrics of each image (evaluation.folders.write_csv)
    <cell>/cell.json         the parameters that decide its numbers (Cell.parameters)
    <cell>/result.json       written last: the mean metrics, the folders they come from, the peak
                             memory and the time per image

A cell with its ``result.json`` is finished and not computed again; an unfinished one resumes as
``inference.py`` does (predictions already written are skipped); a folder holding a cell of other
parameters is refused (:func:`check_cells`). The metrics are those of
``evaluation.folders`` (the library of ``tools/evaluate.py``) on the folders ``result.json`` names
under ``evaluation``, so ``tools/evaluate.py --pred-dir P --label-dir L --trimap-dir T`` on them
gives the same numbers.

The grid runs in every process of ``--num-gpus`` (or of a ``torchrun`` job): each cell's images
are shared out by predictor.runner; rank 0 derives trimaps, evaluates and writes. The peak memory
of a cell is reset before it (``utils.memory.reset_peak_memory``): on CUDA, torch's peak
allocation during the cell; on the CPU, the process's peak RSS during the cell (its resident
libraries included); the largest over the processes. The time per image is the predictor's
(transfer, forward, known-region clamp) per image of the cell; images predicted by an earlier,
interrupted run are not timed (``timed_images``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.image_io import BadSampleError, is_complete_image, read_map_u8, write_image
from data.readers import MattingItem, scan_test_set
from data.trimap import erosion_trimap
from engine.config import LazyConfig
from engine.launch import launch
from evaluation.folders import evaluate_items, match_files, mean_metrics, write_csv
from evaluation.grid import (
    CELL_JSON,
    PER_IMAGE_CSV,
    PRED_DIR,
    RESULT_JSON,
    Cell,
    DatasetSpec,
    ModelSpec,
    RunOptions,
)
from modeling.meta_arch.mematte import padded_size
from predictor import runner
from utils import comm
from utils.device import resolve_device
from utils.file_io import atomic_write
from utils.levels import UINT8_MAX
from utils.memory import reset_peak_memory

__all__ = ["check_cells", "check_test_set", "load_result", "run_cells"]

logger = logging.getLogger(__name__)

SCHEMA = "mematte-eval-cell/1"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _cell_json(cell: Cell) -> dict | None:
    try:
        return json.loads((cell.folder / CELL_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def check_cells(cells: list[Cell], options: RunOptions) -> None:
    """Cell folders of an earlier run must hold cells of the same parameters.

    Raises:
        ValueError: naming the folder and the parameters that differ.
    """
    for cell in cells:
        recorded = _cell_json(cell)
        if recorded is None:
            if cell.result_path.exists():
                raise ValueError(f"{cell.folder} holds a {RESULT_JSON} without {CELL_JSON}")
            continue
        wanted = cell.parameters(options)
        differing = sorted(k for k in wanted if recorded.get(k) != wanted[k])
        if differing:
            raise ValueError(
                f"{cell.folder} holds a cell of other parameters ({', '.join(differing)} "
                "differ): write to another --output-dir"
            )


# --- the test set and its trimaps ---------------------------------------------------------------


def check_test_set(spec: DatasetSpec) -> list[MattingItem]:
    """The items of a test set that can be evaluated: every image with a trimap and an alpha.

    Raises:
        FileNotFoundError, ValueError: no such folder, no layout, or images without trimap or
            alpha (named).
    """
    test_set = scan_test_set(spec.root, spec.layout)
    lacking = [("trimap", p) for p in test_set.missing_trimaps]
    lacking += [("alpha", p) for p in test_set.missing_alphas]
    if not test_set.items:
        raise ValueError(f"{spec.root}: no image with a trimap")
    if test_set.items[0].alpha_path is None and not lacking:
        raise ValueError(
            f"{spec.root}: no ground-truth alpha folder ({test_set.layout.describe()})"
        )
    if lacking:
        shown = ", ".join(f"{path.name} (no {what})" for what, path in lacking[:10])
        raise ValueError(f"{spec.root}: {len(lacking)} images cannot be evaluated: {shown}")
    return test_set.items


def _derived_trimaps(cell: Cell, items: list[MattingItem]) -> Path:
    """Write the re-derived trimaps of the cell's band width that are missing (rank 0), and
    return their folder (collective).

    Raises:
        ValueError: (on every rank) an alpha matte that cannot be read.
    """
    folder = cell.trimap_root / cell.trimap.label
    error = None
    if comm.is_main_process():
        folder.mkdir(parents=True, exist_ok=True)
        kernel = 2 * cell.trimap.width + 1  # an elliptic kernel of radius `width`
        try:
            for item in items:
                path = folder / f"{item.name}.png"
                if not is_complete_image(path, decode=True):
                    alpha = read_map_u8(item.alpha_path).astype(np.float32) / UINT8_MAX
                    write_image(path, erosion_trimap(alpha, kernel, kernel))
        except (BadSampleError, OSError) as exc:
            error = f"cannot derive the trimaps of {folder}: {exc}"
    error = comm.all_gather(error)[0]
    if error is not None:
        raise ValueError(error)
    return folder


# --- inference --------------------------------------------------------------------------------


def _inference_args(
    cell: Cell, options: RunOptions, items: list[MattingItem], trimaps: list[Path], cap: int | None
) -> argparse.Namespace:
    """The parsed command line of ``inference.py`` for these images, trimaps and cap."""
    return argparse.Namespace(
        config_file=str(cell.model.config_file),
        checkpoint=str(cell.model.checkpoint),
        trust_checkpoint=options.trust_checkpoint,
        device=options.device,
        precision=options.precision,
        onnx=None,
        data_dir=None,
        layout=None,
        image=[str(item.image_path) for item in items],
        trimap=[str(path) for path in trimaps],
        mask=None,
        unknown_width=None,
        output_dir=str(cell.folder / PRED_DIR),
        max_number_token=cap,
        batch_size=options.batch_size,
        patch_decoder=options.patch_decoder,
        save_routing=False,
        save_foreground=False,
        save_rgba=False,
        composite=None,
        save_trimap=False,
        overwrite=False,
        round=False,
        workers=options.workers,
        num_gpus=options.num_gpus,
        report=None,
        video=None,
        trimap_dir=None,
        mask_dir=None,
        temporal=None,
        temporal_strength=None,
        propagate=None,
        alpha_bits=None,
        save_video=None,
        fps=None,
        segmenter=None,
        box=None,
        point=None,
        prompts=None,
        max_pixels=options.max_pixels,
        snap_trimap=options.snap_trimap,
        opts=list(options.overrides),
    )


def _token_counter(
    model: ModelSpec, overrides: tuple[str, ...]
) -> Callable[[tuple[int, int]], int]:
    """``tokens(hw)``: the tokens of an image of size ``hw`` for the config's padding and patch."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(model.config_file)), list(overrides))
    step, patch = cfg.model.size_divisibility, cfg.model.backbone.patch_size

    def tokens(hw: tuple[int, int]) -> int:
        height, width = padded_size(hw, step)
        return (height // patch) * (width // patch)

    return tokens


def _cap_groups(
    cell: Cell, options: RunOptions, items: list[MattingItem]
) -> dict[int | None, list[MattingItem]]:
    """The images of the cell by their cap: one group, or one per cap for a ratio."""
    if not isinstance(cell.cap.value, float):
        return {cell.cap.tokens_for(0): items}
    tokens = _token_counter(cell.model, options.overrides)
    groups = defaultdict(list)
    for item in items:
        with Image.open(item.image_path) as image:
            width, height = image.size
        groups[cell.cap.tokens_for(tokens((height, width)))].append(item)
    return dict(sorted(groups.items()))


def _device(options: RunOptions) -> torch.device:
    """This process's device, as predictor.runner picks it."""
    device = resolve_device(options.device)
    if comm.get_world_size() > 1 and device.type == "cuda":
        return torch.device("cuda", comm.get_local_rank())
    return device


def _predict(cell: Cell, options: RunOptions, items: list[MattingItem], trimaps: dict) -> dict:
    """Predict the cell's missing alphas (collective); the numbers of the run, merged over the
    processes (the largest peak memory).

    Raises:
        ValueError: the model cannot be built or its weights loaded.
    """
    reset_peak_memory(_device(options))
    done, failed, model_seconds, peak = 0, [], 0.0, 0
    caps = {}
    for cap, group in _cap_groups(cell, options, items).items():
        args = _inference_args(cell, options, group, [trimaps[i.name] for i in group], cap)
        summary, _ = runner.run(args)
        done += len(summary.done)
        failed += summary.failed
        model_seconds += summary.model_seconds
        peak = max(peak, summary.peak_memory_bytes)
        caps[str(cap)] = len(group)
    return {
        "timed_images": done,
        "seconds_per_image": model_seconds / done if done else None,
        "peak_memory_bytes": peak if done else None,
        "caps": caps,
        "failed": failed,
    }


# --- the cell ---------------------------------------------------------------------------------


def _jsonable(fields: dict) -> dict:
    """Paths as strings."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}


def load_result(path: Path) -> dict | None:
    """A cell's result, or None where it is missing or not a complete result."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == SCHEMA else None


def _evaluate(
    cell: Cell, items: list[MattingItem], trimap_dir: Path, run: dict, options: RunOptions
) -> None:
    """Rank 0: the metrics of the cell's predictions; write the CSV, then ``result.json``.

    Raises:
        ValueError: the folders do not match, or an image could not be evaluated (logged by
            evaluation.folders): the cell stays unfinished.
    """
    label_dir = items[0].alpha_path.parent
    eval_trimaps = trimap_dir if cell.eval_on_input else items[0].trimap_path.parent
    pred_dir = cell.folder / PRED_DIR
    matched = match_files(pred_dir, label_dir, eval_trimaps)
    per_image, failures = evaluate_items(
        matched,
        cell.test_set.region,
        workers=options.eval_workers,
        snap_trimap=options.snap_trimap,
    )
    if failures:
        raise ValueError(f"{len(failures)} images could not be evaluated: {', '.join(failures)}")
    write_csv(cell.folder / PER_IMAGE_CSV, per_image)
    record = {
        "schema": SCHEMA,
        "model": _jsonable(asdict(cell.model)),
        "test_set": _jsonable(asdict(cell.test_set)),
        "cap": {"label": cell.cap.label, "value": cell.cap.value, "images_per_cap": run["caps"]},
        "trimap": {
            "label": cell.trimap.label,
            "width_px": cell.trimap.width,
            "dir": str(trimap_dir),
        },
        "evaluation": {
            "pred_dir": str(pred_dir),
            "label_dir": str(label_dir),
            "trimap_dir": str(eval_trimaps),
            "region": cell.test_set.region,
        },
        "num_images": len(per_image),
        "metrics": mean_metrics(per_image),
        **{k: run[k] for k in ("timed_images", "seconds_per_image", "peak_memory_bytes")},
        "device": run["device"],
        "precision": run["precision"],
        "num_processes": comm.get_world_size(),
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(cell.result_path, lambda file: file.write(text.encode("utf-8")))


def _run_cell(cell: Cell, options: RunOptions) -> bool:
    """Run one cell in every process (collective); whether it is finished."""
    finished = comm.all_gather(load_result(cell.result_path) is not None)[0]
    if finished:
        logger.info("%s: finished earlier (%s)", cell.folder, RESULT_JSON)
        return True
    logger.info("%s: cap %s, trimaps %s", cell.folder, cell.cap.label, cell.trimap.label)
    items = check_test_set(cell.test_set)
    if comm.is_main_process() and _cell_json(cell) is None:
        cell.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(cell.parameters(options), indent=2) + "\n"
        atomic_write(cell.folder / CELL_JSON, lambda file: file.write(text.encode("utf-8")))
    if cell.trimap.width is None:
        trimap_dir = items[0].trimap_path.parent
        trimaps = {item.name: item.trimap_path for item in items}
    else:
        try:
            trimap_dir = _derived_trimaps(cell, items)
        except ValueError as exc:
            logger.error("%s: %s", cell.folder, exc)
            return False
        trimaps = {item.name: trimap_dir / f"{item.name}.png" for item in items}
    run = _predict(cell, options, items, trimaps)  # the same on every rank: merged summaries
    if run["failed"]:
        logger.error("%s: %d images failed: not evaluated", cell.folder, len(run["failed"]))
        return False
    ok = True
    if comm.is_main_process():
        run |= {"device": str(_device(options)), "precision": options.precision}
        try:
            _evaluate(cell, items, trimap_dir, run, options)
        except (ValueError, OSError) as exc:  # files that do not match, an unwritable folder
            logger.error("%s: not evaluated: %s", cell.folder, exc)
            ok = False
    comm.synchronize()
    return comm.all_gather(ok)[0]


def _process_main(
    cells: list[Cell],
    options: RunOptions,
    finish: Callable[[list[Cell]], object] | None,
    status_file: str,
) -> None:
    """What every process of a grid runs: the cells in order, then ``finish(cells)`` on rank 0;
    the exit status to ``status_file``."""
    runner.setup_logging()
    if comm.get_world_size() > 1 and options.device == "cpu":
        # The CPU processes of this machine share its cores (as inference.py's do).
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", options.num_gpus))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
    code = EXIT_OK
    try:
        for cell in cells:
            if not _run_cell(cell, options):
                code = EXIT_FAILED
    except (FileNotFoundError, ValueError) as exc:  # the model, the weights, the test set
        logger.error("%s", exc)
        code = EXIT_USAGE
    if finish is not None and comm.is_main_process():
        finish(cells)
    atomic_write(status_file, lambda file: file.write(str(code).encode()))


def run_cells(
    cells: list[Cell],
    options: RunOptions,
    finish: Callable[[list[Cell]], object] | None = None,
) -> int:
    """Run a grid's cells in ``options.num_gpus`` processes (or this torchrun process), then
    ``finish(cells)`` (a picklable callable: it writes the grid's tables) in rank 0.

    Returns:
        0 every cell finished, 1 a cell has failed images, 2 a setup error.
    """
    with tempfile.TemporaryDirectory(prefix="mematte-grid-") as tmp:
        status_file = str(Path(tmp) / "exit_status")
        try:
            launch(_process_main, options.num_gpus, args=(cells, options, finish, status_file))
        except Exception as exc:  # a process died (its traceback is printed above)
            logger.error("a process of the grid failed: %s", exc)
            return EXIT_FAILED
        return int(Path(status_file).read_text())
