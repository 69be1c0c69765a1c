"""The points of an evaluation grid and how they are given: token caps, trimap variants, models,
test sets, run options, and the cell (one model, test set, cap and trimap variant, and its folder).
:mod:`evaluation.cells` runs cells; ``evaluation.sweep`` and ``evaluation.paper_table`` make grids
of them.

Token caps are absolute (``4096``), a ratio of each image's tokens (``0.25``: ``int(0.25 * n)``,
``n`` the tokens of the padded image, as ``tools/benchmark.py`` counts them) or ``config`` (the
config's cap). Trimaps are the test set's (``released``) or re-derived from its ground truth with
an unknown band of ``w`` px (``data.trimap.erosion_trimap`` with ``(2w + 1)`` px elliptic kernels:
every pixel of fractional alpha, and the pixels within ``w`` px of one, are unknown).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from data.pixel_limits import DEFAULT_MAX_PIXELS, max_pixels_argument
from data.trimap import add_snap_trimap_argument
from evaluation.metrics import Region
from utils.device import resolve_device
from utils.file_io import sha256_of_file

__all__ = [
    "CELL_JSON",
    "CONFIG_CAP",
    "PER_IMAGE_CSV",
    "PRED_DIR",
    "RELEASED",
    "RESULT_JSON",
    "Cell",
    "DatasetSpec",
    "ModelSpec",
    "RunOptions",
    "TokenCap",
    "TrimapVariant",
    "add_run_arguments",
    "model_spec",
    "parse_token_cap",
    "parse_trimap_variant",
    "run_options",
]

CONFIG_CAP = "config"
RELEASED = "released"
# A cell's files (see evaluation.cells).
PRED_DIR, PER_IMAGE_CSV, RESULT_JSON = "pred", "per_image.csv", "result.json"
CELL_JSON = "cell.json"


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
    max_pixels: int = DEFAULT_MAX_PIXELS
    snap_trimap: bool = False


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
        "--max-pixels",
        type=max_pixels_argument,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"largest image read, as inference.py (default {DEFAULT_MAX_PIXELS})",
    )
    add_snap_trimap_argument(parser)
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
        max_pixels=args.max_pixels,
        snap_trimap=args.snap_trimap,
    )
