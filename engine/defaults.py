"""What every training script does before and around the trainer: the command line, output
folder, logging, saved config, seeds, device checks and the default event writers.

References: detectron2 ``detectron2/engine/defaults.py`` (interface only).
"""

import argparse
import logging
import os
import random
import sys
from typing import Any

import numpy as np
import torch

from engine import comm
from engine.checkpoint import add_trust_checkpoint_argument
from engine.config import LazyConfig
from engine.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardWriter

__all__ = [
    "check_init_checkpoint",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "seed_all_rng",
    "setup_logging",
]

logger = logging.getLogger(__name__)

CONFIG_FILE_NAME = "config.yaml"
LOG_FILE_NAME = "log.txt"
METRICS_FILE_NAME = "metrics.json"
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
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config .py/.yaml")
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


def default_setup(cfg: Any, args: argparse.Namespace) -> None:
    """Output folder, logging, saved config, seeds and device checks, as detectron2 does.

    Args:
        cfg: the config (reads ``train.output_dir``, ``train.device``, ``train.seed``).
        args: the parsed command line (logged; ``num_gpus`` shares the CPU cores).

    Raises:
        RuntimeError: ``train.device`` is CUDA but no GPU is visible.
    """
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
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"train.device={cfg.train.device} but no GPU is visible; run with train.device=cpu "
            "(and train.amp.enabled=False or train.amp.precision=bf16)"
        )
    if device.type == "cpu" and world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        # The CPU processes of one machine share its cores (torchrun sets OMP_NUM_THREADS).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.num_gpus))
    if device.type == "cpu":
        # Intra-op threads wait for each other: on a busy machine, OMP_NUM_THREADS=1 is faster.
        logger.info("Running on CPU with %d intra-op threads", torch.get_num_threads())
    seed_all_rng(cfg.train.seed + rank)


def check_init_checkpoint(path: str) -> None:
    """Fail clearly on a configured ``train.init_checkpoint`` that is not there (empty: none).

    Raises:
        FileNotFoundError: ``path`` is set but is not a file.
    """
    if path and not os.path.isfile(path):
        raise FileNotFoundError(
            f"train.init_checkpoint={path} does not exist. Prepare it with "
            "`python pretrained/preprocess.py --input ViTMatte_S_Com.pth --output "
            f"{path}`, pass another path, or train.init_checkpoint='' to start from scratch"
        )


def default_writers(cfg: Any) -> list[EventWriter]:
    """Console progress, ``metrics.json`` and TensorBoard events in ``train.output_dir``."""
    return [
        CommonMetricPrinter(cfg.train.max_iter),
        JSONWriter(os.path.join(cfg.train.output_dir, METRICS_FILE_NAME)),
        TensorboardWriter(cfg.train.output_dir),
    ]
