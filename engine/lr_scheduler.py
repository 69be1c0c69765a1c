"""Learning-rate schedules as fvcore ``ParamScheduler`` multipliers, and their torch adapter.

A config describes the schedule as a multiplier of the base lr over training progress
``where = iteration / max_iter`` in [0, 1]; :class:`LRMultiplier` applies it to an optimizer.

References: detectron2 ``detectron2/solver/lr_scheduler.py`` (interface only).
"""

from typing import Any

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)

__all__ = ["LRMultiplier", "WarmupParamScheduler", "steps_in_iterations"]

WARMUP_METHODS = ("linear", "constant")


class WarmupParamScheduler(CompositeParamScheduler):
    """Prefix ``scheduler`` with a warmup phase.

    During ``[0, warmup_length)`` the value goes from ``warmup_factor * scheduler(0)`` to the value
    ``scheduler`` has where warmup ends (linearly), or stays at the start value (constant).

    Args:
        scheduler: the schedule after warmup.
        warmup_factor: start value as a fraction of ``scheduler(0)``.
        warmup_length: warmup duration as a fraction of training (``warmup_iters / max_iter``).
        warmup_method: ``"linear"`` or ``"constant"``.
        rescale_interval: if True, ``scheduler`` is compressed into ``[warmup_length, 1]`` and
            starts from its own beginning after warmup; if False (default), it keeps its absolute
            timeline and warmup merely overrides its beginning.

    Raises:
        ValueError: unknown ``warmup_method`` or ``warmup_length`` outside [0, 1).
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        rescale_interval: bool = False,
    ) -> None:
        if not 0.0 <= warmup_length < 1.0:
            raise ValueError(f"warmup_length is a fraction of training in [0, 1): {warmup_length}")
        start_value = warmup_factor * scheduler(0.0)
        end_value = scheduler(0.0 if rescale_interval else warmup_length)
        if warmup_method == "linear":
            warmup: ParamScheduler = LinearParamScheduler(start_value, end_value)
        elif warmup_method == "constant":
            warmup = ConstantParamScheduler(start_value)
        else:
            raise ValueError(f"warmup_method must be one of {WARMUP_METHODS}: {warmup_method!r}")
        super().__init__(
            [warmup, scheduler],
            lengths=[warmup_length, 1.0 - warmup_length],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
        )


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Torch lr scheduler with ``lr = base_lr * multiplier(iteration / max_iter)`` per group.

    Step it once per iteration, after ``optimizer.step()``. The multiplier is stateless, so only
    the iteration and the base lrs are saved.

    Args:
        optimizer: the optimizer; each group's ``initial_lr`` (or ``lr``) is its base lr.
        multiplier: the schedule over training progress in [0, 1].
        max_iter: number of iterations of the whole training.
        last_iter: the iteration finished last; -1 to start, ``i - 1`` to resume at iteration
            ``i`` (the optimizer groups then need ``initial_lr``, as a loaded optimizer has).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ) -> None:
        if not isinstance(multiplier, ParamScheduler):
            raise TypeError(f"multiplier must be an fvcore ParamScheduler, got {type(multiplier)}")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def get_lr(self) -> list[float]:
        """The lrs of the iteration ``self.last_epoch``."""
        factor = self._multiplier(self.last_epoch / self._max_iter)
        return [base_lr * factor for base_lr in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        """``{"base_lrs": ..., "last_epoch": ...}``: plain data, loadable with weights_only."""
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}


def steps_in_iterations(scheduler: ParamScheduler, max_iter: int) -> tuple[list[float], list[int]]:
    """A step schedule over progress as the iterations of one run: where the value of
    ``scheduler(i / max_iter)`` changes over the iterations ``i = 0 .. max_iter - 1``.

    ``MultiStepParamScheduler(values, num_updates=max_iter, milestones=milestones)`` gives the same
    value at every iteration of the run (values that no iteration reaches are left out).

    Args:
        scheduler: a function of training progress in [0, 1] (e.g. a ``MultiStepParamScheduler``
            whose ``num_updates`` is another number than ``max_iter``).
        max_iter: the iterations of the run.

    Returns:
        ``(values, milestones)``: the value of each run of equal values, and the iteration where
        each one after the first starts.
    """
    values, milestones = [scheduler(0.0)], []
    for iteration in range(1, max_iter):
        value = scheduler(iteration / max_iter)
        if value != values[-1]:
            values.append(value)
            milestones.append(iteration)
    return values, milestones
