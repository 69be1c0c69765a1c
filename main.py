#!/usr/bin/env python
"""Train or evaluate MEMatte from a LazyConfig file.

Usage::

    python main.py --config-file configs/MEMatte_S_topk0.25_win_global_long.py --num-gpus 2
    python main.py --config-file CFG --num-gpus 2 --resume   # continue from train.output_dir
    python main.py --config-file CFG --eval-only train.init_checkpoint=PATH
    python main.py --config-file CFG train.max_iter=1000 dataloader.train.batch_size=8
    torchrun --nproc_per_node 2 main.py --config-file CFG   # joins torchrun's env:// group

``--num-gpus N`` starts N processes per machine: one per GPU, or without CUDA N CPU processes
that talk over gloo. The config provides ``model``, ``optimizer``, ``lr_multiplier``, ``train``
and ``dataloader.{train,evaluator}`` (see ``configs/common/``).

``train.output_dir`` receives ``config.yaml`` (the resolved config, loadable with
``--config-file``), ``log.txt``, ``metrics.json``, TensorBoard events, and ``model_{iter}.pth`` /
``model_final.pth`` checkpoints with ``last_checkpoint`` naming the newest.

References: detectron2 ``tools/lazyconfig_train_net.py``; MEMatte ``main.py`` (interface only).
"""

import argparse
import logging
import os
import random
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from engine import comm
from engine.checkpoint import Checkpointer
from engine.config import LazyConfig, instantiate
from engine.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardWriter
from engine.hooks import (
    EvalHook,
    ImageLogger,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
)
from engine.launch import create_ddp_model, launch
from engine.optim import freeze_teacher
from engine.train_loop import AMPTrainer
from evaluation.evaluator import MattingEvaluator

logger = logging.getLogger("main")

CONFIG_FILE_NAME = "config.yaml"
LOG_FILE_NAME = "log.txt"
METRICS_FILE_NAME = "metrics.json"
LOG_FORMAT = "[%(asctime)s %(name)s %(levelname)s]: %(message)s"
LOG_DATE_FORMAT = "%m/%d %H:%M:%S"

# Handlers installed by setup_logging, removed again when it is called another time.
_installed_handlers: list[logging.Handler] = []


def default_argument_parser() -> argparse.ArgumentParser:
    """The command line of detectron2's training scripts."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
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


def _precision(cfg: Any) -> str:
    """The trainer's autocast precision from ``train.amp``."""
    return cfg.train.amp.precision if cfg.train.amp.enabled else "fp32"


def _require_checkpoint_file(path: str) -> None:
    """Fail clearly on a configured checkpoint that is not there (empty means none).

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


def do_test(
    cfg: Any, model: nn.Module, evaluator: MattingEvaluator | None = None
) -> dict[str, float]:
    """Evaluate ``model`` with ``dataloader.evaluator`` on the main process.

    Args:
        cfg: the config.
        model: the model, DDP-wrapped or not.
        evaluator: a built evaluator; None builds ``cfg.dataloader.evaluator``.

    Returns:
        ``{"eval/sad": ..., "eval/mse": ..., ...}`` on the main process; ``{}`` on other ranks
        and when the config has no evaluator.
    """
    if evaluator is None:
        if cfg.dataloader.get("evaluator") is None:
            return {}
        evaluator = instantiate(cfg.dataloader.evaluator)
    if not comm.is_main_process():
        return {}
    return evaluator(model)


def do_train(args: argparse.Namespace, cfg: Any) -> None:
    """Train ``cfg.model`` as ``cfg.train`` describes.

    Args:
        args: the parsed command line (``resume`` is used).
        cfg: an object with the attributes:
            model: instantiates to a module;
            dataloader.train: instantiates to the training data loader;
            dataloader.evaluator: instantiates to an evaluator, or is None;
            optimizer: instantiates to an optimizer, once ``optimizer.params.model`` is set;
            lr_multiplier: instantiates to a fvcore ``ParamScheduler``;
            train: output_dir, init_checkpoint, max_iter, amp, ddp, checkpointer, eval_period,
                log_period, log_image_period, device, seed (``configs/common/train.py``).
    """
    # Data first: a wrong dataset folder fails before a large model is built.
    train_loader = instantiate(cfg.dataloader.train)
    evaluator = instantiate(cfg.dataloader.get("evaluator"))

    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    logger.info("Model:\n%s", model)
    frozen = freeze_teacher(model)
    if frozen:
        logger.info("Froze the %d parameter tensors of the distillation teacher", frozen)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = AMPTrainer(model, train_loader, optimizer, precision=_precision(cfg))
    checkpointer = Checkpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            IterationTimer(),
            LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model, evaluator))
            if evaluator is not None
            else None,
            ImageLogger(period=cfg.train.log_image_period),
            PeriodicWriter(default_writers(cfg), period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )

    resuming = args.resume and checkpointer.has_checkpoint()
    if not resuming:
        _require_checkpoint_file(cfg.train.init_checkpoint)
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # The checkpoint holds the iteration that just finished: continue with the next one.
    start_iter = trainer.iter + 1 if resuming else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args: argparse.Namespace) -> dict[str, float] | None:
    """Load the config, apply the overrides, then evaluate (``--eval-only``) or train.

    Returns:
        The metrics with ``--eval-only`` (on the main process), else None.

    Raises:
        ValueError: ``--eval-only`` with a config that has no ``dataloader.evaluator``.
    """
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if args.eval_only and cfg.dataloader.get("evaluator") is None:
        raise ValueError(
            f"{args.config_file} has no dataloader.evaluator, so --eval-only has nothing to "
            "evaluate on; add one, e.g. \"dataloader.evaluator={'_target_': "
            "'evaluation.evaluator.MattingEvaluator', 'data_dir': 'datasets/Composition-1k'}\""
        )
    default_setup(cfg, args)

    if not args.eval_only:
        do_train(args, cfg)
        return None
    _require_checkpoint_file(cfg.train.init_checkpoint)
    if not cfg.train.init_checkpoint:
        logger.warning("train.init_checkpoint is empty: evaluating randomly initialised weights")
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    Checkpointer(model).load(cfg.train.init_checkpoint)
    results = do_test(cfg, model)
    for name, value in results.items():
        logger.info("%s: %.4f", name, value)
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
