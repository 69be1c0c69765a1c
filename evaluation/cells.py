"""One cell of an evaluation grid: a model on a test set with one token cap and one trimap, from
the predictions to the metrics. ``evaluation.sweep`` (``tools/sweep.py``) and
``evaluation.paper_table`` (``tools/paper_table.py``) run grids of cells.

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

Token caps are absolute (``4096``), a ratio of each image's tokens (``0.25``: ``int(0.25 * n)``,
``n`` the tokens of the padded image, as ``tools/benchmark.py`` counts them) or ``config`` (the
config's cap). Trimaps are the test set's (``released``) or re-derived from its ground truth with
an unknown band of ``w`` px (``data.trimap.erosion_trimap`` with ``(2w + 1)`` px elliptic kernels:
every pixel of fractional alpha, and the pixels within ``w`` px of one, are unknown).

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
from dataclasses import asdict, dataclass
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
from evaluation.metrics import Region
from modeling.meta_arch.mematte import padded_size
from predictor import runner
from utils import comm
from utils.device import resolve_device
from utils.file_io import atomic_write, sha256_of_file
from utils.levels import UINT8_MAX
from utils.memory import reset_peak_memory

__all__ = [
    "CONFIG_CAP",
    "RELEASED",
    "Cell",
    "ModelSpec",
    "RunOptions",
    "DatasetSpec",
    "TokenCap",
    "TrimapVariant",
    "add_run_arguments",
    "check_cells",
    "check_test_set",
    "load_result",
    "model_spec",
    "parse_token_cap",
    "parse_trimap_variant",
    "run_cells",
    "run_options",
]

logger = logging.getLogger(__name__)

SCHEMA = "mematte-eval-cell/1"
CONFIG_CAP = "config"
RELEASED = "released"
PRED_DIR, PER_IMAGE_CSV, RESULT_JSON = "pred", "per_image.csv", "result.json"
CELL_JSON = "cell.json"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class TokenCap:
    """The cap on the tokens of one global attention per image.

    Attributes:
        value: None for the config's cap, an int for an absolute cap, a float in (0, 1] for a
            ratio of each image's tokens.
    """

    value: int | float | None = None

    @property
    def label(self) -> str:
        return CONFIG_CAP if self.value is None else str(self.value)

    def tokens_for(self, tokens: int) -> int | None:
        """The cap of an image with ``tokens`` tokens (None: the config's)."""
        if isinstance(self.value, float):
            return int(self.value * tokens)
        return self.value


def parse_token_cap(text: str) -> TokenCap:
    """``config``, an integer (absolute cap) or a number with a point in (0, 1] (a ratio).

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    if text == CONFIG_CAP:
        return TokenCap()
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a cap is an integer, a ratio like 0.25 or {CONFIG_CAP!r}"
        ) from None
    if isinstance(value, float) and not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: a ratio of the tokens is in (0, 1]")
    if isinstance(value, int) and value < 0:
        raise argparse.ArgumentTypeError(f"{text}: a cap is >= 0")
    return TokenCap(value)


@dataclass(frozen=True)
class TrimapVariant:
    """The trimaps a cell feeds: the test set's, or re-derived from its ground truth.

    Attributes:
        width: None for the test set's trimaps; else the unknown band in px around the
            fractional alpha.
    """

    width: int | None = None

    @property
    def label(self) -> str:
        return RELEASED if self.width is None else f"band{self.width}"


def parse_trimap_variant(text: str) -> TrimapVariant:
    """``released`` or a band width in px (an integer >= 0).

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    if text == RELEASED:
        return TrimapVariant()
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: {RELEASED!r} or a width in px (e.g. 10)")
    return TrimapVariant(int(text))


@dataclass(frozen=True)
class ModelSpec:
    """A config and its checkpoint, under a short label for tables and folders, with the
    SHA-256 of both files (:func:`model_spec`)."""

    config_file: Path
    checkpoint: Path
    label: str
    config_sha256: str
    checkpoint_sha256: str


def model_spec(config_file: Path, checkpoint: Path, label: str) -> ModelSpec:
    """A :class:`ModelSpec`, its files hashed.

    Raises:
        FileNotFoundError: a file that does not exist.
    """
    for path in (config_file, checkpoint):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
    return ModelSpec(
        Path(config_file),
        Path(checkpoint),
        label,
        sha256_of_file(config_file),
        sha256_of_file(checkpoint),
    )


@dataclass(frozen=True)
class DatasetSpec:
    """A test-set folder (a layout of ``data.readers``) and the region its metrics sum over."""

    name: str
    root: Path
    layout: str | None = None
    region: Region = "unknown"


@dataclass(frozen=True)
class RunOptions:
    """How the predictions are made and evaluated (the options of ``inference.py`` that a grid
    passes on, and the evaluation's processes)."""

    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 1
    workers: int = 2
    num_gpus: int = 1
    patch_decoder: bool = True
    trust_checkpoint: bool = False
    overrides: tuple[str, ...] = ()
    eval_workers: int = 1


@dataclass(frozen=True)
class Cell:
    """One model, test set, cap and trimap variant, and the folders it reads and writes.

    Attributes:
        folder: the cell's folder (predictions, per-image CSV, result).
        trimap_root: where re-derived trimaps go (``<trimap_root>/<variant label>/``).
        eval_on_input: evaluate on the unknown region of the trimaps fed (else on the test
            set's, the benchmark's region, whatever the trimaps fed).
    """

    model: ModelSpec
    test_set: DatasetSpec
    cap: TokenCap
    trimap: TrimapVariant
    folder: Path
    trimap_root: Path
    eval_on_input: bool = False

    @property
    def result_path(self) -> Path:
        return self.folder / RESULT_JSON

    def parameters(self, options: RunOptions) -> dict:
        """What decides the cell's numbers (``cell.json``): a finished cell is reused only for
        the same."""
        return {
            "config_sha256": self.model.config_sha256,
            "checkpoint_sha256": self.model.checkpoint_sha256,
            "test_set": str(self.test_set.root.resolve()),
            "layout": self.test_set.layout,
            "region": self.test_set.region,
            "cap": self.cap.label,
            "trimap": self.trimap.label,
            "eval_on_input": self.eval_on_input,
            "device": resolve_device(options.device).type,
            "precision": options.precision,
            "patch_decoder": options.patch_decoder,
            "overrides": list(options.overrides),
        }


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of how a grid predicts and evaluates (besides the model and the device), and
    its output folder."""
    parser.add_argument("--output-dir", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--region",
        choices=("unknown", "all"),
        default="unknown",
        help="pixels the metrics sum over: the trimap's unknown region (the DIM protocol) or the "
        "whole image",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, metavar="B", help="images of equal size at once"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="image-decoding processes per inference process (0: in the main process)",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        metavar="N",
        help="inference processes: one per GPU, or N CPU processes with --device cpu "
        "(torchrun sets its own)",
    )
    parser.add_argument(
        "--eval-workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="processes computing the metrics",
    )
    parser.add_argument(
        "--no-patch-decoder",
        dest="patch_decoder",
        action="store_false",
        help="decode whole images instead of the official 512 px tiles",
    )
    parser.add_argument(
        "--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides"
    )


def run_options(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` of parsed options (``add_run_arguments`` and
    ``utils.arguments.add_device_arguments``, ``--trust-checkpoint``)."""
    for flag, value in (("--batch-size", args.batch_size), ("--num-gpus", args.num_gpus)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1")
    if args.workers < 0 or args.eval_workers < 1:
        raise ValueError("--workers must be >= 0 and --eval-workers >= 1")
    return RunOptions(
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        workers=args.workers,
        num_gpus=args.num_gpus,
        patch_decoder=args.patch_decoder,
        trust_checkpoint=args.trust_checkpoint,
        overrides=tuple(args.override),
        eval_workers=args.eval_workers,
    )


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
    cell: Cell, items: list[MattingItem], trimap_dir: Path, run: dict, workers: int
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
    per_image, failures = evaluate_items(matched, cell.test_set.region, workers=workers)
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
            _evaluate(cell, items, trimap_dir, run, options.eval_workers)
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
