"""The hooks a training run registers: timing, lr schedule, checkpoints, evaluation, writers,
training images.

Typical order (writers last, so that they see what the other hooks put in the storage)::

    trainer.register_hooks([
        IterationTimer(),
        LRScheduler(scheduler=lr_multiplier),
        PeriodicCheckpointer(checkpointer, period=2693),
        EvalHook(eval_period, lambda: do_test(cfg, model)),
        ImageLogger(period=log_image_period),
        PeriodicWriter(writers, period=20) if comm.is_main_process() else None,
    ])

References: detectron2 ``detectron2/engine/hooks.py`` (interface only).
"""

import datetime
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from fvcore.common.param_scheduler import ParamScheduler
from fvcore.common.timer import Timer

from engine.checkpoint import Checkpointer
from engine.events import EventWriter
from engine.lr_scheduler import LRMultiplier
from engine.train_loop import HookBase
from utils import comm

__all__ = [
    "EvalHook",
    "ImageLogger",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
]

logger = logging.getLogger(__name__)

PRED_ALPHA_KEY = "phas"


class IterationTimer(HookBase):
    """Put each iteration's wall time as ``time`` and log the training speed at the end, as
    detectron2's ``IterationTimer`` does.

    An iteration's time runs from this hook's ``before_step`` to its ``after_step``: register it
    first, so that it covers the step and the other hooks' ``before_step`` only. The first
    ``warmup_iter - 1`` iterations (slow from start-up) are not recorded, nor counted in the
    speed logged at the end; from iteration ``start_iter + warmup_iter - 1`` on, every one is.

    Args:
        warmup_iter: see above.
    """

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = warmup_iter
        self._step_timer = Timer()
        self._train_start = time.perf_counter()
        # Time inside steps only (paused while the other hooks' after_step run).
        self._steps_timer = Timer()

    def before_train(self) -> None:
        """Start the clocks."""
        self._train_start = time.perf_counter()
        self._steps_timer.reset()
        self._steps_timer.pause()

    def before_step(self) -> None:
        """Start the step clock."""
        self._step_timer.reset()
        self._steps_timer.resume()

    def after_step(self) -> None:
        """Record the step time, or restart the clocks during warmup."""
        iterations_done = self.trainer.storage.iter - self.trainer.start_iter + 1
        if iterations_done >= self._warmup_iter:
            self.trainer.storage.put_scalar("time", self._step_timer.seconds())
        else:
            self._train_start = time.perf_counter()
            self._steps_timer.reset()
        self._steps_timer.pause()

    def after_train(self) -> None:
        """Log the speed after warmup (steps only) and the total time (hooks included)."""
        total = time.perf_counter() - self._train_start
        steps = self._steps_timer.seconds()
        num_iter = self.trainer.storage.iter + 1 - self.trainer.start_iter - self._warmup_iter
        if num_iter > 0 and steps > 0:
            logger.info(
                "Overall training speed: %d iterations in %s (%.4f s / it)",
                num_iter,
                datetime.timedelta(seconds=int(steps)),
                steps / num_iter,
            )
        logger.info(
            "Total training time: %s (%s on hooks)",
            datetime.timedelta(seconds=int(total)),
            datetime.timedelta(seconds=int(total - steps)),
        )


class LRScheduler(HookBase):
    """Step an lr scheduler after every iteration and put the lr used as ``lr``.

    ``lr`` is the largest lr over the param groups: with layer-wise decay that is the base lr
    times the schedule.

    Args:
        optimizer: defaults to ``trainer.optimizer``.
        scheduler: a torch lr scheduler, or an fvcore ``ParamScheduler`` multiplier that is wrapped
            in :class:`LRMultiplier` over ``trainer.max_iter`` when training starts (positioned at
            the start iteration, so resuming needs no scheduler state).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | ParamScheduler | None = None,
    ) -> None:
        if scheduler is None:
            raise ValueError("LRScheduler needs a scheduler")
        self._optimizer = optimizer
        self.scheduler = scheduler

    def before_train(self) -> None:
        """Wrap a ``ParamScheduler`` into an :class:`LRMultiplier` at the start iteration."""
        if self._optimizer is None:
            self._optimizer = self.trainer.optimizer
        if isinstance(self.scheduler, ParamScheduler):
            self.scheduler = LRMultiplier(
                self._optimizer,
                self.scheduler,
                self.trainer.max_iter,
                last_iter=self.trainer.iter - 1,
            )

    def after_step(self) -> None:
        """Put the lr of this iteration, then move to the next one."""
        lr = max(group["lr"] for group in self._optimizer.param_groups)
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """The torch scheduler's state (empty before a ``ParamScheduler`` is wrapped)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a torch scheduler; an unwrapped multiplier is positioned in before_train."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            self.scheduler.load_state_dict(dict(state))


class PeriodicCheckpointer(HookBase):
    """Save ``{file_prefix}_{iter:07d}.pth`` every ``period`` iterations and
    ``{file_prefix}_final.pth`` after the last one.

    Register it on every rank: saving gathers every rank's random generator states (see
    :meth:`engine.train_loop.TrainerBase.state_dict`); the main process writes the files. The
    saved ``iteration`` is the one just finished: resume with ``start_iter = iteration + 1``.

    Args:
        checkpointer: what to save (model, trainer state, ...).
        period: save after iterations ``period - 1``, ``2 * period - 1``, ...
        max_to_keep: keep only the newest periodic checkpoints of this run (the final one is
            always kept).
        file_prefix: file name prefix.
    """

    def __init__(
        self,
        checkpointer: Checkpointer,
        period: int,
        max_to_keep: int | None = None,
        file_prefix: str = "model",
    ) -> None:
        self.checkpointer = checkpointer
        self.period = int(period)
        self.max_to_keep = max_to_keep
        self.file_prefix = file_prefix
        self._recent: list[str] = []

    def after_step(self) -> None:
        """Save when the period or the last iteration is reached."""
        iteration = self.trainer.iter
        if (iteration + 1) % self.period == 0:
            name = f"{self.file_prefix}_{iteration:07d}"
            self.checkpointer.save(name, iteration=iteration)
            self._drop_old(name)
        if iteration >= self.trainer.max_iter - 1:
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=iteration)

    def _drop_old(self, name: str) -> None:
        """Delete this run's periodic checkpoints beyond the newest ``max_to_keep``."""
        if self.max_to_keep is None or not comm.is_main_process():
            return
        self._recent.append(name)
        while len(self._recent) > self.max_to_keep:
            self.checkpointer.delete(self._recent.pop(0))


def _current_cuda_device() -> list[int]:
    """The CUDA device of this process, if any (whose generator ``fork_rng`` saves)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return [torch.cuda.current_device()]
    return []


class EvalHook(HookBase):
    """Run an evaluation every ``eval_period`` iterations and after the last one.

    Runs on every rank (the function handles any distribution); ranks are synchronized after it.

    Args:
        eval_period: evaluate after iterations ``eval_period - 1``, ``2 * eval_period - 1``, ...;
            0 evaluates only at the end.
        eval_function: returns a flat mapping ``metric name -> number`` (or None); the numbers are
            put into the storage, unsmoothed.
    """

    def __init__(
        self, eval_period: int, eval_function: Callable[[], Mapping[str, Any] | None]
    ) -> None:
        self._period = eval_period
        self._function = eval_function

    def _do_eval(self) -> None:
        # An evaluation must not change the training that follows: its random draws (if any)
        # come from a copy of the generators.
        with torch.random.fork_rng(devices=_current_cuda_device()):
            results = self._function()
        if results:
            for name, value in results.items():
                try:
                    number = float(value)
                except (TypeError, ValueError) as error:
                    raise ValueError(
                        f"eval_function must return a flat dict of numbers; {name!r} is {value!r}"
                    ) from error
                self.trainer.storage.put_scalar(name, number, smoothing_hint=False)
        comm.synchronize()

    def after_step(self) -> None:
        """Evaluate at the period (the final evaluation is left to after_train)."""
        next_iter = self.trainer.iter + 1
        if (
            self._period > 0
            and next_iter % self._period == 0
            and next_iter != self.trainer.max_iter
        ):
            self._do_eval()

    def after_train(self) -> None:
        """Evaluate once more if training finished (recorded at iteration ``max_iter``)."""
        if self.trainer.iter >= self.trainer.max_iter:
            self._do_eval()


class PeriodicWriter(HookBase):
    """Call the writers every ``period`` iterations, after the last one and at the end.

    Args:
        writers: e.g. ``[CommonMetricPrinter(max_iter), JSONWriter(...), TensorboardWriter(...)]``.
        period: write after iterations ``period - 1``, ``2 * period - 1``, ...
    """

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        self._writers = list(writers)
        self._period = period

    def before_train(self) -> None:
        """Tell the writers where training starts (a resumed run drops what it will redo)."""
        for writer in self._writers:
            writer.start(self.trainer.start_iter)

    def after_step(self) -> None:
        """Write at the period and after the last iteration."""
        iteration = self.trainer.iter
        if (iteration + 1) % self._period == 0 or iteration == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        """Write what later hooks added (e.g. the final evaluation), then close the writers."""
        for writer in self._writers:
            writer.write()
            writer.close()


def _as_image(tensor: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` float image clamped to [0, 1]."""
    return tensor.detach().float().clamp(0.0, 1.0)


class ImageLogger(HookBase):
    """Every ``period`` iterations, put the first sample of the latest batch into the storage:
    ``train/image``, ``train/trimap`` ({0, 0.5, 1} shown as black, gray, white),
    ``train/alpha_gt`` and, when the model returned ``phas``,
    ``train/alpha_pred`` (main process only; a :class:`~engine.events.TensorboardWriter` writes
    and drops them, so register one).

    Args:
        period: log after iterations ``period - 1``, ``2 * period - 1``, ...
    """

    def __init__(self, period: int) -> None:
        self._period = period

    def after_step(self) -> None:
        """Queue the images of this iteration when the period is reached."""
        if not comm.is_main_process() or (self.trainer.iter + 1) % self._period != 0:
            return
        batch = self.trainer.last_batch
        storage = self.trainer.storage
        storage.put_image("train/image", _as_image(batch["image"][0]))
        storage.put_image("train/trimap", _as_image(batch["trimap"][0]))
        storage.put_image("train/alpha_gt", _as_image(batch["alpha"][0]))
        pred = self.trainer.last_outputs.get(PRED_ALPHA_KEY)
        if pred is not None:
            storage.put_image("train/alpha_pred", _as_image(pred[0]))
