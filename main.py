#!/usr/bin/env python
"""Train or evaluate MEMatte from a LazyConfig file.

Usage::

    python main.py --config-file configs/MEMatte_S_topk0.25_win_global_long.py --num-gpus 2
    python main.py --config-file CFG --num-gpus 2 --resume   # continue from train.output_dir
    python main.py --config-file CFG --eval-only train.init_checkpoint=PATH
    python main.py --config-file CFG --trust-checkpoint   # a trusted file with pickled objects
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
from typing import Any

from torch import nn

from engine import comm
from engine.checkpoint import Checkpointer
from engine.config import LazyConfig, instantiate
from engine.defaults import (
    check_init_checkpoint,
    default_argument_parser,
    default_setup,
    default_writers,
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
    precision = cfg.train.amp.precision if cfg.train.amp.enabled else "fp32"
    trainer = AMPTrainer(model, train_loader, optimizer, precision=precision)
    checkpointer = Checkpointer(
        model, cfg.train.output_dir, trusted=args.trust_checkpoint, trainer=trainer
    )
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
        check_init_checkpoint(cfg.train.init_checkpoint)
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
    check_init_checkpoint(cfg.train.init_checkpoint)
    if not cfg.train.init_checkpoint:
        logger.warning("train.init_checkpoint is empty: evaluating randomly initialised weights")
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    Checkpointer(model, trusted=args.trust_checkpoint).load(cfg.train.init_checkpoint)
    results = do_test(cfg, model)
    for name, value in results.items():
        logger.info("%s: %.4f", name, value)
    return results


if __name__ == "__main__":
    args = default_argument_parser(__doc__).parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
