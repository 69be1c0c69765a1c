"""Learning-rate multiplier: linear warmup, then steps down to 0.1x and 0.05x of the base lr.

A fvcore ``ParamScheduler`` over training progress ``iteration / max_iter``, stepped by
``main.py``'s ``LRScheduler`` hook. Holds the MEMatte-S recipe: steps after epochs 6 and 26 of 30.
"""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from engine.config import LazyCall as L
from engine.lr_scheduler import WarmupParamScheduler

from .train import ITERS_PER_EPOCH, train

WARMUP_ITERS = 250  # official warmup length, whatever the schedule length
WARMUP_FACTOR = 0.001  # warmup starts at 0.1% of the base lr
LR_STEP_EPOCHS = (6, 26)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.05],
        milestones=[int(ITERS_PER_EPOCH * epoch) for epoch in LR_STEP_EPOCHS],  # 8081, 35018
        num_updates=train.max_iter,
    ),
    warmup_length=WARMUP_ITERS / train.max_iter,
    warmup_factor=WARMUP_FACTOR,
)
