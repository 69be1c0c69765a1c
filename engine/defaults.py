"""What every training script does before and around the trainer: the command line, output
folder, logging, saved config, seeds, device checks, the model summary, the default event writers,
and one-line reports of setup errors.

References: detectron2 ``detectron2/engine/defaults.py`` (interface only).
"""

import argparse
import logging
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.checkpoint import CheckpointError
from engine.config import ConfigOverrideError, LazyConfig
from engine.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardWriter
from utils import comm
from utils.arguments import add_config_argument, add_trust_checkpoint_argument
from utils.file_io import atomic_write

__all__ = [
    "EXIT_SETUP_ERROR",
    "SETUP_ERRORS",
    "SetupError",
    "check_device",
    "check_init_checkpoint",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "exit_on_setup_error",
    "model_summary",
    "remove_failed_setup",
    "save_model_summary",
    "seed_all_rng",
    "setup_logging",
]

logger = logging.getLogger(__name__)

CONFIG_FILE_NAME = "config.yaml"
LOG_FILE_NAME = "log.txt"
METRICS_FILE_NAME = "metrics.json"
MODEL_FILE_NAME = "model.txt"
# What default_setup and the model summary write before training: a folder that holds nothing
# else has no training result in it.
SETUP_FILE_NAMES = frozenset({CONFIG_FILE_NAME, LOG_FILE_NAME, MODEL_FILE_NAME})
# Exit status of a run that could not start (as argparse's for a bad command line).
EXIT_SETUP_ERROR = 2


class SetupError(ValueError):
    """A run that cannot start as configured (device, evaluator, checkpoint path)."""


# Errors of the user's setup, reported in one line (no traceback) by exit_on_setup_error.
SETUP_ERRORS = (
    SetupError,
    ConfigOverrideError,
    CheckpointError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
)
LOG_FORMAT = "[%(asctime)s %(name)s %(levelname)s]: %(message)s"
LOG_DATE_FORMAT = "%m/%d %H:%M:%S"

# Handlers installed by setup_logging, removed again when it is called another time.
_installed_handlers: list[logging.Handler] = []


def default_argument_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line of detectron2's training scripts, plus ``--trust-checkpoint``.

    Args:
        description: the script's help text (its docstring).
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_argument(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in train.output_dir, if there is one "
        "(otherwise start from train.init_checkpoint)",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate train.init_checkpoint on dataloader.evaluator and exit",
    )
    add_trust_checkpoint_argument(parser)
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="rendezvous URL (tcp://host:port) of multi-machine jobs; 'auto' picks a free local "
        "port; ignored under torchrun",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides key=value, e.g. train.max_iter=1000 train.output_dir=out/x",
    )
    return parser


def setup_logging(output_dir: str | None) -> None:
    """Console logging on every rank (warnings only off rank 0) and ``log.txt`` on rank 0.

    Args:
        output_dir: folder of ``log.txt``; None for console only.
    """
    root = logging.getLogger()
    for handler in _installed_handlers:
        root.removeHandler(handler)
        handler.close()
    _installed_handlers.clear()
    formatter = logging.Formatter(LOG_FORMAT, datefmt=LOG_DATE_FORMAT)
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO if comm.is_main_process() else logging.WARNING)
    _installed_handlers.append(console)
    if output_dir and comm.is_main_process():
        _installed_handlers.append(logging.FileHandler(os.path.join(output_dir, LOG_FILE_NAME)))
    for handler in _installed_handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def seed_all_rng(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_device(device_name: str) -> None:
    """Fail clearly on a CUDA ``train.device`` without a visible GPU.

    Raises:
        SetupError: ``device_name`` is CUDA but no GPU is visible.
    """
    if torch.device(device_name).type == "cuda" and not torch.cuda.is_available():
        raise SetupError(
            f"train.device={device_name} but no GPU is visible; run with train.device=cpu "
            "(and train.amp.enabled=False or train.amp.precision=bf16)"
        )


def default_setup(cfg: Any, args: argparse.Namespace) -> None:
    """Output folder, logging, saved config, seeds and device checks, as detectron2 does.

    Args:
        cfg: the config (reads ``train.output_dir``, ``train.device``, ``train.seed``).
        args: the parsed command line (logged; ``num_gpus`` shares the CPU cores).

    Raises:
        SetupError: ``train.device`` is CUDA but no GPU is visible.
    """
    check_device(cfg.train.device)
    output_dir = cfg.train.output_dir
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logging(output_dir)
    rank, world_size = comm.get_rank(), comm.get_world_size()
    logger.info("Rank %d of %d; torch %s", rank, world_size, torch.__version__)
    logger.info("Command line arguments: %s", args)
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, CONFIG_FILE_NAME)
        LazyConfig.save(cfg, path)
        logger.info("Full config saved to %s", path)

    device = torch.device(cfg.train.device)
    if device.type == "cpu" and world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        # The CPU processes of one machine share its cores (torchrun sets OMP_NUM_THREADS).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.num_gpus))
    if device.type == "cpu":
        # Intra-op threads wait for each other: on a busy machine, OMP_NUM_THREADS=1 is faster.
        logger.info("Running on CPU with %d intra-op threads", torch.get_num_threads())
    seed_all_rng(cfg.train.seed + rank)


def check_init_checkpoint(path: str, *, eval_only: bool = False, output_dir: str = "") -> None:
    """Fail clearly on a configured ``train.init_checkpoint`` that is not there (empty: none).

    Args:
        path: ``train.init_checkpoint``.
        eval_only: the checkpoint is to be evaluated (a trained model), not trained from (a
            prepared ViTMatte checkpoint): the message suggests the matching fix.
        output_dir: ``train.output_dir``, where a trained model's checkpoints are.

    Raises:
        FileNotFoundError: ``path`` is set but is not a file.
    """
    if not path or os.path.isfile(path):
        return
    if eval_only:
        final = os.path.join(output_dir or "OUTPUT_DIR", "model_final.pth")
        hint = f"pass the trained checkpoint to evaluate, e.g. train.init_checkpoint={final}"
    else:
        hint = (
            "prepare it with `python pretrained/preprocess.py --input ViTMatte_S_Com.pth "
            f"--output {path}`, pass another path, or train.init_checkpoint='' to start from "
            "scratch"
        )
    raise FileNotFoundError(f"train.init_checkpoint={path} does not exist; {hint}")


def model_summary(model: nn.Module) -> str:
    """A table of parameter counts per top-level module (trainable and frozen), with totals."""

    def counts(module: nn.Module) -> tuple[int, int]:
        params = list(module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return trainable, sum(p.numel() for p in params) - trainable

    rows = [("module", "class", "trainable", "frozen")]
    for name, child in model.named_children():
        trainable, frozen = counts(child)
        if trainable or frozen:
            rows.append((name, type(child).__name__, f"{trainable:,}", f"{frozen:,}"))
    trainable, frozen = counts(model)
    rows.append(("total", type(model).__name__, f"{trainable:,}", f"{frozen:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        )
        for row in rows
    )


def save_model_summary(model: nn.Module, output_dir: str) -> None:
    """Log :func:`model_summary` and write the model's full ``repr`` to ``model.txt`` in
    ``output_dir`` (main process; console only without an output folder)."""
    path = os.path.join(output_dir, MODEL_FILE_NAME) if output_dir else ""
    where = f"; full structure in {path}" if path else ""
    logger.info("Parameters%s:\n%s", where, model_summary(model))
    if path and comm.is_main_process():
        text = f"{model}\n"
        atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def remove_failed_setup(output_dir: str) -> None:
    """Remove ``output_dir`` after a run failed before training wrote anything into it: if the
    folder holds only what setup wrote (``SETUP_FILE_NAMES``), those files and the folder go.

    Call it only for a folder this run created (main process).
    """
    folder = Path(output_dir)
    if not folder.is_dir() or any(p.name not in SETUP_FILE_NAMES for p in folder.iterdir()):
        return
    setup_logging(None)  # closes log.txt
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    logger.info("Removed %s: the run failed before training wrote anything", folder)


def exit_on_setup_error(prog: str, function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function(*args)``; a :data:`SETUP_ERRORS` error is printed as one line
    ``{prog}: error: ...`` on stderr and ends the process with :data:`EXIT_SETUP_ERROR`.

    Returns:
        What ``function`` returned.
    """
    try:
        return function(*args)
    except SETUP_ERRORS as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_SETUP_ERROR) from error


def default_writers(cfg: Any) -> list[EventWriter]:
    """Console progress, ``metrics.json`` and TensorBoard events in ``train.output_dir``."""
    return [
        CommonMetricPrinter(cfg.train.max_iter),
        JSONWriter(os.path.join(cfg.train.output_dir, METRICS_FILE_NAME)),
        TensorboardWriter(cfg.train.output_dir),
    ]
