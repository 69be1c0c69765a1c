"""Hook-based training loop: :class:`TrainerBase`, :class:`SimpleTrainer`, :class:`AMPTrainer`.

The model contract: in ``train()`` mode ``model(batch)`` returns a dict whose ``loss_*`` entries are
scalar tensors (summed into the training loss) and which may also hold ``"phas"`` (predicted alpha
``[B, 1, H, W]``, kept for image logging) and ``"keep_ratios"`` (one tensor per routed block: the
fraction of tokens routed to global attention, logged as ``token_ratio/*``).

References: detectron2 ``detectron2/engine/train_loop.py`` (interface only).
"""

import contextlib
import logging
import math
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from engine import comm
from engine.events import EventStorage
from utils.device import PRECISIONS

__all__ = ["AMPTrainer", "HookBase", "SimpleTrainer", "TrainerBase"]

logger = logging.getLogger(__name__)

LOSS_PREFIX = "loss_"
KEEP_RATIOS_KEY = "keep_ratios"


class HookBase:
    """A hook called by :meth:`TrainerBase.train`::

        hook.before_train()
        for trainer.iter in range(start_iter, max_iter):
            hook.before_step(); trainer.run_step(); hook.after_step()
        hook.after_train()  # also after an exception; trainer.iter == max_iter on success

    :meth:`TrainerBase.register_hooks` sets ``self.trainer`` (a weak proxy) before training.
    Hooks with state to checkpoint override :meth:`state_dict` / :meth:`load_state_dict`.
    """

    trainer: "TrainerBase"

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once after the last iteration, or after training stopped on an exception."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_step(self) -> None:
        """Called after each iteration."""

    def state_dict(self) -> dict[str, Any]:
        """State saved with the trainer; empty for stateless hooks."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class TrainerBase:
    """An iteration loop with hooks; subclasses implement :meth:`run_step`.

    Attributes:
        iter: the current iteration (``max_iter`` once training finished).
        start_iter: the iteration training (re)started from.
        max_iter: the iteration training stops before.
        storage: the :class:`EventStorage` open during :meth:`train`.
    """

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.storage: EventStorage

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        """Append hooks, in call order; ``None`` entries (e.g. rank-0-only hooks) are skipped."""
        for hook in hooks:
            if hook is None:
                continue
            # A proxy avoids a reference cycle trainer <-> hook.
            hook.trainer = weakref.proxy(self)
            self._hooks.append(hook)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` with the hooks.

        Args:
            start_iter: first iteration (``checkpoint iteration + 1`` when resuming).
            max_iter: the iteration to stop before.
        """
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # Hooks tell success from failure in after_train by iter == max_iter.
                self.iter = max_iter
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        """Call every hook's ``before_train``."""
        for hook in self._hooks:
            hook.before_train()

    def after_train(self) -> None:
        """Point the storage at :attr:`iter` (``max_iter`` after success: a final evaluation is
        recorded there, as in detectron2), then call every hook's ``after_train``."""
        self.storage.iter = self.iter
        for hook in self._hooks:
            hook.after_train()

    def before_step(self) -> None:
        """Point the storage at the new iteration, then call every hook's ``before_step``."""
        self.storage.iter = self.iter
        for hook in self._hooks:
            hook.before_step()

    def after_step(self) -> None:
        """Call every hook's ``after_step``."""
        for hook in self._hooks:
            hook.after_step()

    def run_step(self) -> None:
        """One training iteration."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"iteration": iter, "hooks": {hook class name: state}}`` (stateless hooks omitted).

        Raises:
            ValueError: two hooks of the same class both have state.
        """
        hook_states: dict[str, dict[str, Any]] = {}
        for hook in self._hooks:
            state = hook.state_dict()
            if not state:
                continue
            name = type(hook).__qualname__
            if name in hook_states:
                raise ValueError(f"Two {name} hooks have state; their checkpoints would collide")
            hook_states[name] = state
        return {"iteration": self.iter, "hooks": hook_states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the iteration and the hooks' states from :meth:`state_dict`."""
        self.iter = int(state["iteration"])
        hook_states = state.get("hooks", {})
        for hook in self._hooks:
            name = type(hook).__qualname__
            if name in hook_states:
                hook.load_state_dict(hook_states[name])


class _EpochCycler:
    """Endless iterator over a finite data loader.

    Calls ``data_loader.sampler.set_epoch(epoch)`` (when the sampler has it, like
    ``DistributedSampler``) before each pass, so every epoch gets a new shuffle.

    Attributes:
        epoch: index of the pass in progress (-1 before the first batch).
    """

    def __init__(self, data_loader: Iterable[Any]) -> None:
        self._data_loader = data_loader
        self._iterator: Iterator[Any] | None = None
        self.epoch = -1

    def __iter__(self) -> "_EpochCycler":
        return self

    def __next__(self) -> Any:
        if self._iterator is not None:
            with contextlib.suppress(StopIteration):
                return next(self._iterator)
        self.epoch += 1
        sampler = getattr(self._data_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self._iterator = iter(self._data_loader)
        try:
            return next(self._iterator)
        except StopIteration:
            raise RuntimeError(f"The data loader yielded no batch in epoch {self.epoch}") from None

    def start_after(self, epoch: int) -> None:
        """Drop the current pass; the next batch starts epoch ``epoch + 1``."""
        self.epoch = epoch
        self._iterator = None


class SimpleTrainer(TrainerBase):
    """Plain fp32 training: data, forward, sum of ``loss_*``, backward, optimizer step.

    Per iteration it writes to the storage ``data_time``, ``total_loss``, every ``loss_*`` and, when
    the model returns ``keep_ratios``, ``token_ratio/block{i}`` (``i`` counts routed blocks) and
    ``token_ratio/mean``; these values are averaged over ranks (for logging only).

    Resuming restarts the data at the beginning of the next epoch: the position inside an epoch is
    not saved.

    Args:
        model: a module following the model contract of this file, in train mode.
        data_loader: a finite or infinite iterable of batches; iterated endlessly.
        optimizer: the optimizer of the model's trainable parameters.

    Attributes:
        last_batch: the batch of the latest iteration (for image logging).
        last_outputs: its non-loss tensor outputs, detached (e.g. ``"phas"``).
    """

    def __init__(
        self, model: nn.Module, data_loader: Iterable[Any], optimizer: torch.optim.Optimizer
    ) -> None:
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self._data_iter = _EpochCycler(data_loader)
        self.last_batch: Any = None
        self.last_outputs: dict[str, torch.Tensor] = {}

    def run_step(self) -> None:
        """One iteration; non-finite losses raise ``FloatingPointError`` before the update.

        Raises:
            RuntimeError: the model is in eval mode.
            ValueError: the model returned no ``loss_*`` entry.
        """
        if not self.model.training:
            raise RuntimeError("The model was switched to eval mode during training")
        start = time.perf_counter()
        batch = next(self._data_iter)
        data_time = time.perf_counter() - start

        with self._autocast():
            outputs = self.model(batch)
        loss_dict = {name: value for name, value in outputs.items() if name.startswith(LOSS_PREFIX)}
        if not loss_dict:
            raise ValueError(f"The model returned no {LOSS_PREFIX}* entry: {sorted(outputs)}")
        total_loss = sum(loss_dict.values())

        self.optimizer.zero_grad(set_to_none=True)
        self._backward(total_loss)
        # Metrics before the update: a non-finite loss stops training with the weights intact.
        self._write_metrics(loss_dict, outputs.get(KEEP_RATIOS_KEY, ()), data_time)
        self._optimizer_step()

        self.last_batch = batch
        self.last_outputs = {
            name: value.detach()
            for name, value in outputs.items()
            if not name.startswith(LOSS_PREFIX) and isinstance(value, torch.Tensor)
        }

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context of the forward pass (none in fp32)."""
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _optimizer_step(self) -> None:
        self.optimizer.step()

    def _write_metrics(
        self,
        loss_dict: Mapping[str, torch.Tensor],
        keep_ratios: Iterable[torch.Tensor],
        data_time: float,
    ) -> None:
        """Average the losses and token ratios over ranks and put them into the storage."""
        metrics = {name: value.detach() for name, value in loss_dict.items()}
        ratios = [ratio.detach().float().mean() for ratio in keep_ratios]
        for index, ratio in enumerate(ratios):
            metrics[f"token_ratio/block{index}"] = ratio
        if ratios:
            metrics["token_ratio/mean"] = torch.stack(ratios).mean()
        reduced = comm.reduce_dict(metrics, average=True)
        names = list(reduced)
        # One device-to-host copy for all values.
        values = torch.stack([reduced[name].float().reshape(()) for name in names]).tolist()
        scalars = dict(zip(names, values))
        total_loss = sum(scalars[name] for name in loss_dict)
        if not math.isfinite(total_loss):
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration {self.iter}: {scalars}"
            )
        # The slowest rank sets the pace, so report its data time.
        self.storage.put_scalar("data_time", max(comm.all_gather(data_time)))
        self.storage.put_scalar("total_loss", total_loss)
        self.storage.put_scalars(**scalars)

    def state_dict(self) -> dict[str, Any]:
        """Iteration, hook states, optimizer state and the data epoch."""
        state = super().state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        state["data_epoch"] = self._data_iter.epoch
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the data continues with the next epoch."""
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self._data_iter.start_after(int(state.get("data_epoch", -1)))


def _device_type(model: nn.Module) -> str:
    """Device type (``"cuda"``, ``"cpu"``) of the model's first parameter."""
    return next(model.parameters()).device.type


class AMPTrainer(SimpleTrainer):
    """:class:`SimpleTrainer` with the forward pass under ``torch.autocast``.

    Args:
        model: see :class:`SimpleTrainer`.
        data_loader: see :class:`SimpleTrainer`.
        optimizer: see :class:`SimpleTrainer`.
        precision: ``"fp16"`` (CUDA only, with loss scaling), ``"bf16"`` (CUDA or CPU) or
            ``"fp32"`` (no autocast).
        grad_scaler: loss scaler for fp16; defaults to ``torch.amp.GradScaler("cuda")``.

    Raises:
        ValueError: unknown precision, fp16 on a non-CUDA model, or a scaler without fp16.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        precision: str = "fp16",
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        device_type = _device_type(model)
        if precision == "fp16":
            if device_type != "cuda":
                raise ValueError(
                    f"fp16 mixed precision needs a CUDA model (this one is on {device_type}); "
                    "use precision='bf16' or 'fp32'"
                )
            grad_scaler = grad_scaler or torch.amp.GradScaler(device_type)
        elif grad_scaler is not None:
            raise ValueError(f"A GradScaler is only used with fp16, not {precision}")
        super().__init__(model, data_loader, optimizer)
        self.precision = precision
        self.device_type = device_type
        self.grad_scaler = grad_scaler

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=PRECISIONS[self.precision])

    def _backward(self, loss: torch.Tensor) -> None:
        if self.grad_scaler is None:
            loss.backward()
        else:
            self.grad_scaler.scale(loss).backward()

    def _optimizer_step(self) -> None:
        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """:meth:`SimpleTrainer.state_dict` plus the loss scaler's state (fp16)."""
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
