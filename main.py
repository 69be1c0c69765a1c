#!/usr/bin/env python
"""Train or evaluate MEMatte from a LazyConfig file.

Usage::

    python main.py --config-file configs/MEMatte_S_topk0.25_win_global_long.py --num-gpus 2
    python main.py --config-file CFG --num-gpus 2 --resume   # continue from train.output_dir
    python main.py --config-file CFG --overwrite   # delete the run in train.output_dir, restart
    python main.py --config-file OUT/config.yaml --resume   # a run's folder holds its config
    python main.py --config-file CFG --eval-only train.init_checkpoint=PATH
    python main.py --config-file CFG --trust-checkpoint   # a trusted file with pickled objects
    python main.py --config-file CFG train.max_iter=1000 dataloader.train.batch_size=8
    torchrun --nproc_per_node 2 main.py --config-file CFG   # joins torchrun's env:// group

``--num-gpus N`` starts N processes per machine: one per GPU, or without CUDA N CPU processes
that talk over gloo. The config provides ``model``, ``optimizer``, ``lr_multiplier``, ``train``
and ``dataloader.{train,evaluator}`` (see ``configs/common/``).

``train.output_dir`` receives ``config.yaml`` (the config that runs, loadable with
``--config-file``: overrides applied, the lr steps as iterations of this run), ``log.txt``,
``model.txt`` (the model's structure), ``metrics.json``, TensorBoard events, and
``model_{iter}.pth`` / ``model_final.pth`` checkpoints, each with a ``.sha256``, with
``last_checkpoint`` naming the newest. ``--resume`` continues exactly where the last checkpoint
left off (data position and random generators included). A folder that holds a run is refused
unless ``--resume`` continues it or ``--overwrite`` deletes its files first.

A run that cannot start (a wrong override, data folder, device or checkpoint) stops with one line
``main.py: error: ...`` and exit status 2, before any process is spawned where it can tell, and
removes the output folder it created.

References: detectron2 ``tools/lazyconfig_train_net.py``; MEMatte ``main.py`` (interface only).
"""

import argparse
import logging
import os
from typing import Any

from torch import nn

from engine.checkpoint import Checkpointer
from engine.config import LazyConfig, instantiate
from engine.defaults import (
    SetupError,
    check_device,
    check_init_checkpoint,
    check_output_dir,
    default_argument_parser,
    default_setup,
    default_writers,
    exit_on_setup_error,
    remove_failed_setup,
    save_model_summary,
)
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
from utils import comm

logger = logging.getLogger("main")


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
        args: the parsed command line (``resume`` and ``trust_checkpoint`` are used).
        cfg: an object with the attributes:
            model: instantiates to a module;
            dataloader.train: instantiates to the training data loader;
            dataloader.evaluator: instantiates to an evaluator, or is None;
            optimizer: instantiates to an optimizer, once ``optimizer.params.model`` is set;
            lr_multiplier: instantiates to a fvcore ``ParamScheduler``;
            train: output_dir, init_checkpoint, init_strict, max_iter, amp, ddp, checkpointer,
                eval_period, log_period, log_image_period, device, seed
                (``configs/common/train.py``).
    """
    # Data first: a wrong dataset folder fails before a large model is built.
    train_loader = instantiate(cfg.dataloader.train)
    evaluator = instantiate(cfg.dataloader.get("evaluator"))

    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    frozen = freeze_teacher(model)
    if frozen:
        logger.info("Froze the %d parameter tensors of the distillation teacher", frozen)
    save_model_summary(model, cfg.train.output_dir)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    routed_blocks = model.backbone.routed_block_indexes

    model = create_ddp_model(model, **cfg.train.ddp)
    precision = cfg.train.amp.precision if cfg.train.amp.enabled else "fp32"
    trainer = AMPTrainer(model, train_loader, optimizer, routed_blocks, precision=precision)
    checkpointer = Checkpointer(
        model,
        cfg.train.output_dir,
        trusted=args.trust_checkpoint,
        strict_shapes=cfg.train.init_strict,
        trainer=trainer,
    )
    trainer.register_hooks(
        [
            IterationTimer(),
            LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),  # every rank
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
    if args.resume and not resuming:
        logger.warning(
            "--resume: no checkpoint in train.output_dir=%s (no last_checkpoint file); starting "
            "from train.init_checkpoint=%r instead",
            cfg.train.output_dir,
            cfg.train.init_checkpoint,
        )
    if not resuming:
        check_init_checkpoint(cfg.train.init_checkpoint)
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # The checkpoint holds the iteration that just finished: continue with the next one.
    start_iter = trainer.iter + 1 if resuming else 0
    trainer.train(start_iter, cfg.train.max_iter)


def do_eval_only(args: argparse.Namespace, cfg: Any) -> dict[str, float]:
    """Evaluate ``train.init_checkpoint`` with ``dataloader.evaluator``, which logs the metrics
    in the table of ``tools/evaluate.py`` (paper units, each column's scaling in its header)."""
    check_init_checkpoint(
        cfg.train.init_checkpoint, eval_only=True, output_dir=cfg.train.output_dir
    )
    if not cfg.train.init_checkpoint:
        logger.warning("train.init_checkpoint is empty: evaluating randomly initialised weights")
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    Checkpointer(model, trusted=args.trust_checkpoint, strict_shapes=cfg.train.init_strict).load(
        cfg.train.init_checkpoint
    )
    return do_test(cfg, model)  # the evaluator logs the table, with the units


def load_config(args: argparse.Namespace) -> Any:
    """The config file with the command line's overrides applied (checked: see
    :meth:`engine.config.LazyConfig.apply_overrides`).

    Raises:
        SetupError: ``--eval-only`` with a config that has no ``dataloader.evaluator``.
    """
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if args.eval_only and cfg.dataloader.get("evaluator") is None:
        raise SetupError(
            f"{args.config_file} has no dataloader.evaluator, so --eval-only has nothing to "
            "evaluate on; add one, e.g. \"dataloader.evaluator={'_target_': "
            "'evaluation.evaluator.MattingEvaluator', 'data_dir': 'datasets/Composition-1k'}\""
        )
    return cfg


def main(args: argparse.Namespace) -> dict[str, float] | None:
    """Load the config, apply the overrides, then evaluate (``--eval-only``) or train.

    A run that fails before training wrote anything removes the output folder it created.

    Returns:
        The metrics with ``--eval-only`` (on the main process), else None.
    """
    cfg = load_config(args)
    output_dir = cfg.train.output_dir
    created = bool(output_dir) and comm.is_main_process() and not os.path.exists(output_dir)
    try:
        default_setup(cfg, args)
        if not args.eval_only:
            do_train(args, cfg)
            return None
        return do_eval_only(args, cfg)
    except BaseException:
        if created:
            remove_failed_setup(output_dir)
        raise


def cli_main(args: argparse.Namespace) -> None:
    """:func:`main` in every process of the command line: setup errors in one line."""
    exit_on_setup_error("main.py", main, args)


def check_before_launch(args: argparse.Namespace) -> None:
    """What can be checked before any process is spawned: the config and overrides, the device
    (``--num-gpus N`` with ``train.device=cuda`` and no GPU) and, for training, an output folder
    that holds a run without ``--resume`` or ``--overwrite``."""
    cfg = load_config(args)
    check_device(cfg.train.device)
    if not args.eval_only:
        check_output_dir(
            cfg.train.output_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            init_checkpoint=cfg.train.init_checkpoint,
        )


def build_parser() -> argparse.ArgumentParser:
    """The command line's options (detectron2's training command line)."""
    return default_argument_parser(__doc__)


if __name__ == "__main__":
    args = build_parser().parse_args()
    exit_on_setup_error("main.py", check_before_launch, args)
    launch(
        cli_main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
