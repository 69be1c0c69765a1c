"""Learning-rate multiplier: linear warmup, then steps down to 0.1x and 0.05x of the base lr.

A fvcore ``ParamScheduler`` over training progress ``iteration / max_iter``, stepped by
``main.py``'s ``LRScheduler`` hook. The schedule's lengths are set by a recipe with
:func:`set_schedule` (in iterations) or :func:`set_epoch_schedule` (in DIM epochs): the one place
where iterations per epoch, milestones and the warmup fraction are computed.
"""

from collections.abc import Sequence
from typing import Any

from fvcore.common.param_scheduler import MultiStepParamScheduler

from engine.config import LazyCall as L
from engine.lr_scheduler import WarmupParamScheduler

WARMUP_ITERS = 250  # official warmup length, whatever the schedule length
WARMUP_FACTOR = 0.001  # warmup starts at 0.1% of the base lr
# One DIM epoch: 431 foregrounds x 100 backgrounds = 43100 composites.
DIM_TRAIN_SAMPLES = 43100

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.05],
        milestones="???",  # set by a recipe (set_schedule / set_epoch_schedule)
        num_updates="???",
    ),
    warmup_length="???",
    warmup_factor=WARMUP_FACTOR,
)


def set_schedule(
    train: Any,
    lr_multiplier: Any,
    *,
    max_iter: int,
    milestones: Sequence[int],
    checkpoint_period: int,
    warmup_iters: int = WARMUP_ITERS,
) -> None:
    """Set the training length, the lr steps (iterations), checkpoint period and warmup."""
    train.max_iter = max_iter
    train.checkpointer.period = checkpoint_period
    # The multiplier is a function of progress (iteration / max_iter): a later train.max_iter
    # override keeps the shape of the schedule.
    lr_multiplier.scheduler.num_updates = max_iter
    lr_multiplier.scheduler.milestones = list(milestones)
    lr_multiplier.warmup_length = warmup_iters / max_iter


def set_epoch_schedule(
    train: Any,
    lr_multiplier: Any,
    *,
    batch_per_gpu: int,
    num_gpus: int,
    epochs: int,
    lr_step_epochs: Sequence[int],
    checkpoint_epochs: float,
    samples_per_epoch: int = DIM_TRAIN_SAMPLES,
) -> None:
    """:func:`set_schedule` in epochs, as the official configs compute it: iterations per epoch
    kept a float (``int(43100 / 16 / 2 * 30)``), every length truncated once."""
    iters_per_epoch = samples_per_epoch / (batch_per_gpu * num_gpus)
    set_schedule(
        train,
        lr_multiplier,
        max_iter=int(iters_per_epoch * epochs),
        milestones=[int(iters_per_epoch * epoch) for epoch in lr_step_epochs],
        checkpoint_period=int(iters_per_epoch * checkpoint_epochs),
    )
