"""What every training script does before and around the trainer: the command line, output
folder, logging, saved config, seeds, device checks, the model summary, the default event writers,
and one-line reports of setup errors.

References: detectron2 ``detectron2/engine/defaults.py`` (interface only).
"""

import argparse
import copy
import logging
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import DictConfig
from torch import nn

from engine.checkpoint import CHECKSUM_SUFFIX, LAST_CHECKPOINT_FILE, CheckpointError
from engine.config import ConfigOverrideError, LazyConfig, instantiate
from engine.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardWriter
from engine.lr_scheduler import WarmupParamScheduler, steps_in_iterations
from utils import comm
from utils.arguments import add_config_argument, add_trust_checkpoint_argument
from utils.file_io import atomic_write

__all__ = [
    "EXIT_SETUP_ERROR",
    "SETUP_ERRORS",
    "SetupError",
    "check_device",
    "check_init_checkpoint",
    "check_output_dir",
    "clear_previous_run",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "exit_on_setup_error",
    "model_summary",
    "previous_run_files",
    "remove_failed_setup",
    "save_model_summary",
    "schedule_in_iterations",
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
# What training writes into train.output_dir: checkpoints (model_0001234.pth, model_final.pth)
# with their SHA-256 files, the last-checkpoint tag, the metrics and TensorBoard's event files.
# A folder with one of them holds a run.
CHECKPOINT_PATTERN = "model_*.pth"
RUN_FILE_PATTERNS = (
    CHECKPOINT_PATTERN,
    CHECKPOINT_PATTERN + CHECKSUM_SUFFIX,
    LAST_CHECKPOINT_FILE,
    METRICS_FILE_NAME,
    "events.out.tfevents.*",
)
# Files of an earlier run named in a message before the rest are counted.
MAX_LISTED_FILES = 4
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
    """The command line of detectron2's training scripts, plus ``--overwrite`` and
    ``--trust-checkpoint``.

    Args:
        description: the script's help text (its docstring).
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_argument(parser)
    existing_run = parser.add_mutually_exclusive_group()
    existing_run.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in train.output_dir, if there is one "
        "(otherwise start from train.init_checkpoint)",
    )
    existing_run.add_argument(
        "--overwrite",
        action="store_true",
        help="train afresh in a train.output_dir that holds a run: its checkpoints, metrics, "
        "TensorBoard events, log and config are deleted first (without --resume or "
        "--overwrite, such a folder is refused)",
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
    """Output folder, logging, saved config, seeds and device checks, as detectron2 does. The
    lr steps are written in iterations of the run first (:func:`schedule_in_iterations`), so
    that ``config.yaml`` is the config that runs.

    Training into a folder that holds a run needs ``--resume`` or ``--overwrite``
    (:func:`check_output_dir`); ``--overwrite`` deletes that run's files first
    (:func:`clear_previous_run`). ``--eval-only`` in such a folder keeps its ``config.yaml``.

    Args:
        cfg: the config (reads ``train.output_dir``, ``train.device``, ``train.seed``,
            ``train.init_checkpoint``; rewrites the lr steps of ``lr_multiplier``).
        args: the parsed command line (logged; ``eval_only``, ``resume`` and ``overwrite``
            decide about an existing run; ``num_gpus`` shares the CPU cores).

    Raises:
        SetupError: ``train.device`` is CUDA but no GPU is visible, or the output folder holds a
            run and neither ``--resume`` nor ``--overwrite`` is given.
    """
    check_device(cfg.train.device)
    output_dir = cfg.train.output_dir
    training = not args.eval_only
    if training:
        check_output_dir(
            output_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            init_checkpoint=cfg.train.init_checkpoint,
        )
    deleted = []
    if training and args.overwrite and comm.is_main_process() and output_dir:
        deleted = clear_previous_run(output_dir)
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logging(output_dir)
    rank, world_size = comm.get_rank(), comm.get_world_size()
    logger.info("Rank %d of %d; torch %s", rank, world_size, torch.__version__)
    logger.info("Command line arguments: %s", args)
    if deleted:
        logger.info("--overwrite: deleted the %d files of the run in %s", len(deleted), output_dir)
    schedule_in_iterations(cfg)  # the saved config is the schedule that runs
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, CONFIG_FILE_NAME)
        if training or not previous_run_files(output_dir):
            LazyConfig.save(cfg, path)
            logger.info("Full config saved to %s", path)
        else:  # evaluating a run's checkpoint in its folder: its config.yaml stays
            logger.info("%s holds a training run: its %s is kept", output_dir, CONFIG_FILE_NAME)

    device = torch.device(cfg.train.device)
    if device.type == "cpu" and world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        # The CPU processes of one machine share its cores (torchrun sets OMP_NUM_THREADS).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.num_gpus))
    if device.type == "cpu":
        # Intra-op threads wait for each other: on a busy machine, OMP_NUM_THREADS=1 is faster.
        logger.info("Running on CPU with %d intra-op threads", torch.get_num_threads())
    seed_all_rng(cfg.train.seed + rank)


# The step schedule whose milestones schedule_in_iterations writes in iterations of the run, and
# the warmup that may wrap it (which passes it the run's progress unless rescale_interval).
STEP_SCHEDULER = f"{MultiStepParamScheduler.__module__}.{MultiStepParamScheduler.__qualname__}"
WARMUP_SCHEDULER = f"{WarmupParamScheduler.__module__}.{WarmupParamScheduler.__qualname__}"


def _run_progress_steps(lr_multiplier: Any) -> DictConfig | None:
    """The :data:`STEP_SCHEDULER` node of ``lr_multiplier`` that is evaluated at the run's
    progress (iteration / max_iter): the multiplier itself, or the schedule of a warmup without
    ``rescale_interval``; None if there is none."""
    if not isinstance(lr_multiplier, DictConfig):
        return None
    if lr_multiplier.get("_target_") == STEP_SCHEDULER:
        return lr_multiplier
    inner = lr_multiplier.get("scheduler")
    if (
        lr_multiplier.get("_target_") == WARMUP_SCHEDULER
        and not lr_multiplier.get("rescale_interval", False)
        and isinstance(inner, DictConfig)
        and inner.get("_target_") == STEP_SCHEDULER
    ):
        return inner
    return None


def schedule_in_iterations(cfg: Any) -> None:
    """Write the lr steps of ``cfg.lr_multiplier`` as the iterations of this run.

    The multiplier is a function of progress (iteration / ``train.max_iter``): after a
    ``train.max_iter`` override a step schedule keeps its shape and steps at other iterations
    than its milestones say (``milestones=[300, 450]`` of ``num_updates=500`` step at 120 and 180
    of 200). They are rewritten as those iterations (``num_updates = train.max_iter``; a value
    no iteration reaches is dropped), if the rewritten multiplier gives the same lr at every
    iteration, so that the saved ``config.yaml`` is the schedule that ran. Nothing changes when
    the milestones are iterations of the run already.

    Args:
        cfg: a config with ``lr_multiplier`` and ``train.max_iter`` (changed in place).
    """
    lr_multiplier = cfg.get("lr_multiplier")
    node = _run_progress_steps(lr_multiplier)
    if node is None:
        return
    max_iter = cfg.train.max_iter
    values, milestones = steps_in_iterations(instantiate(node), max_iter)
    in_iterations = {"values": values, "milestones": milestones, "num_updates": max_iter}
    if all(node[name] == value for name, value in in_iterations.items()):
        return
    rewritten = copy.deepcopy(lr_multiplier)
    _run_progress_steps(rewritten).update(in_iterations)
    before, after = instantiate(lr_multiplier), instantiate(rewritten)
    if any(before(i / max_iter) != after(i / max_iter) for i in range(max_iter)):
        logger.info("lr schedule: its steps cannot be written as iterations; kept as configured")
        return
    logger.info(
        "lr steps at iterations %s of train.max_iter=%d (configured: milestones %s of "
        "num_updates=%d, a fraction of training); the saved config records the iterations",
        milestones,
        max_iter,
        list(node["milestones"]),
        node["num_updates"],
    )
    node.update(in_iterations)


def previous_run_files(output_dir: str | os.PathLike) -> list[Path]:
    """The files of a training run in ``output_dir`` (:data:`RUN_FILE_PATTERNS`), sorted; [] for
    a folder without them or no folder."""
    folder = Path(output_dir)
    if not output_dir or not folder.is_dir():
        return []
    found = {path for pattern in RUN_FILE_PATTERNS for path in folder.glob(pattern)}
    return sorted(path for path in found if path.is_file())


def check_output_dir(
    output_dir: str, *, resume: bool, overwrite: bool, init_checkpoint: str = ""
) -> None:
    """Refuse to train into a folder that holds a run unless ``--resume`` or ``--overwrite``
    says which: a new run would replace its checkpoints one by one and add its TensorBoard events
    to the old ones. With ``--overwrite``, ``train.init_checkpoint`` must not be one of the files
    it deletes.

    Raises:
        SetupError: naming the folder, some of its run files and the two options.
    """
    files = previous_run_files(output_dir)
    if not files or resume:
        return
    if overwrite:
        doomed = {path.resolve() for path in files}
        if init_checkpoint and Path(init_checkpoint).resolve() in doomed:
            raise SetupError(
                f"train.init_checkpoint={init_checkpoint} is a file of the run in "
                f"train.output_dir={output_dir}, which --overwrite deletes: copy it elsewhere "
                "first, or set another train.output_dir"
            )
        return
    names = ", ".join(path.name for path in files[:MAX_LISTED_FILES])
    if len(files) > MAX_LISTED_FILES:
        names += f" and {len(files) - MAX_LISTED_FILES} more"
    raise SetupError(
        f"train.output_dir={output_dir} holds a training run ({names}): pass --resume to "
        "continue it, or --overwrite to delete its files and train afresh (or set another "
        "train.output_dir)"
    )


def clear_previous_run(output_dir: str) -> list[Path]:
    """Delete the files of a training run (:func:`previous_run_files`) and of its setup
    (:data:`SETUP_FILE_NAMES`) from ``output_dir``; other files stay. Main process only.

    Returns:
        The files deleted.
    """
    folder = Path(output_dir)
    setup = [folder / name for name in sorted(SETUP_FILE_NAMES) if (folder / name).is_file()]
    deleted = [*previous_run_files(output_dir), *setup]
    for path in deleted:
        path.unlink()
    return deleted


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
