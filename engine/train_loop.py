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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from engine.events import EventStorage
from engine.rng import get_rng_state, set_rng_state
from utils import comm
from utils.device import PRECISIONS

__all__ = ["AMPTrainer", "HookBase", "SimpleTrainer", "TrainerBase"]

logger = logging.getLogger(__name__)

LOSS_PREFIX = "loss_"
KEEP_RATIOS_KEY = "keep_ratios"
TOKEN_RATIO_PREFIX = "token_ratio/"


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
        """``{"iteration": iter, "hooks": {hook class name: state}, "rng_states": [...]}``
        (stateless hooks omitted; ``rng_states`` holds every rank's global random generators).

        Collective in a distributed run: every rank must call it (the checkpointer does).

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
        return {
            "iteration": self.iter,
            "hooks": hook_states,
            "rng_states": comm.all_gather(get_rng_state()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the iteration, the hooks' states and this rank's random generators from
        :meth:`state_dict` (a checkpoint without them, e.g. an official one, or of another
        number of ranks keeps the current generators, with a warning)."""
        self.iter = int(state["iteration"])
        hook_states = state.get("hooks", {})
        for hook in self._hooks:
            name = type(hook).__qualname__
            if name in hook_states:
                hook.load_state_dict(hook_states[name])
        rng_states = state.get("rng_states", [])
        if len(rng_states) == comm.get_world_size():
            set_rng_state(rng_states[comm.get_rank()])
        else:
            logger.warning(
                "The checkpoint holds the random generator states of %d ranks, this run has %d: "
                "the generators are not restored, so the run will not replay an uninterrupted one",
                len(rng_states),
                comm.get_world_size(),
            )


class _EpochCycler:
    """Endless iterator over a finite data loader that can resume inside an epoch.

    Calls ``data_loader.sampler.set_epoch(epoch)`` (when the sampler has it, like
    ``DistributedSampler``) before each pass, so every epoch gets a new shuffle. A resumed pass
    starts after the batches already delivered: the sampler's ``skip(num_samples)`` (as
    ``data.build.TrainSampler`` has) drops their samples before anything is loaded; with another
    sampler the batches are loaded and dropped.

    Attributes:
        epoch: index of the pass in progress (-1 before the first batch).
        batches: batches of that pass delivered so far.
    """

    def __init__(self, data_loader: Iterable[Any]) -> None:
        self._data_loader = data_loader
        self._iterator: Iterator[Any] | None = None
        self._resume_at: tuple[int, int] | None = None
        self.epoch = -1
        self.batches = 0

    def __iter__(self) -> "_EpochCycler":
        return self

    def __next__(self) -> Any:
        for _ in range(2):  # the pass in progress, else a new one
            if self._iterator is None:
                self._begin_pass()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                continue
            self.batches += 1
            return batch
        raise RuntimeError(f"The data loader yielded no batch in epoch {self.epoch}")

    def _begin_pass(self) -> None:
        """Start the next pass, or the resumed one after its delivered batches."""
        epoch, skip = self._resume_at or (self.epoch + 1, 0)
        self._resume_at = None
        self.epoch, self.batches = epoch, skip
        sampler = getattr(self._data_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        batch_size = getattr(self._data_loader, "batch_size", None)
        if skip and hasattr(sampler, "skip") and batch_size:
            sampler.skip(skip * batch_size)
            skip = 0
        self._iterator = iter(self._data_loader)
        for _ in range(skip):
            if next(self._iterator, None) is None:
                break

    def state_dict(self) -> dict[str, int]:
        """The position: ``{"epoch": ..., "batches": ...}``."""
        return {"epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue after ``state``'s position at the next batch.

        Raises:
            RuntimeError: the cycler already started a pass.
        """
        if self._iterator is not None:
            raise RuntimeError("The data position can only be restored before the first batch")
        if state["epoch"] >= 0:
            self._resume_at = (int(state["epoch"]), int(state["batches"]))


class SimpleTrainer(TrainerBase):
    """Plain fp32 training: data, forward, sum of ``loss_*``, backward, optimizer step.

    Per iteration it writes to the storage ``data_time`` (the slowest rank's), ``rank_data_time``
    (this rank's), ``total_loss``, every ``loss_*`` and, when the model returns ``keep_ratios``,
    ``token_ratio/block{i}`` (``i`` the backbone block index of the routed block) and
    ``token_ratio/mean``; losses and ratios are averaged over ranks (for logging only).

    Its state (saved in checkpoints) holds the optimizer and the data position (epoch and batches
    delivered in it), so a resumed run continues with the very next batch.

    Args:
        model: a module following the model contract of this file, in train mode.
        data_loader: a finite or infinite iterable of batches; iterated endlessly.
        optimizer: the optimizer of the model's trainable parameters.
        routed_block_indexes: the backbone block index of each entry of the model's
            ``keep_ratios`` (MEMatte: ``model.backbone.routed_block_indexes``).

    Attributes:
        last_batch: the batch of the latest iteration (for image logging).
        last_outputs: its non-loss tensor outputs, detached (e.g. ``"phas"``).
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        routed_block_indexes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.routed_block_indexes = tuple(routed_block_indexes)
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
        if ratios and len(ratios) != len(self.routed_block_indexes):
            raise ValueError(
                f"The model returned {len(ratios)} keep_ratios for the routed blocks "
                f"{list(self.routed_block_indexes)} given to the trainer"
            )
        for block, ratio in zip(self.routed_block_indexes, ratios):
            metrics[f"{TOKEN_RATIO_PREFIX}block{block}"] = ratio
        if ratios:
            metrics[f"{TOKEN_RATIO_PREFIX}mean"] = torch.stack(ratios).mean()
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
        # The slowest rank sets the pace, so report its data time (and this rank's, as detectron2).
        self.storage.put_scalar("data_time", max(comm.all_gather(data_time)))
        self.storage.put_scalar("rank_data_time", data_time)
        self.storage.put_scalar("total_loss", total_loss)
        self.storage.put_scalars(**scalars)

    def state_dict(self) -> dict[str, Any]:
        """:meth:`TrainerBase.state_dict` plus the optimizer state and the data position."""
        state = super().state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        state["data"] = self._data_iter.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the data continues with the batch after the saved one (a
        checkpoint without a data position, e.g. an official one, starts the data anew)."""
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        if "data" in state:
            self._data_iter.load_state_dict(state["data"])
        else:
            logger.info("The checkpoint has no data position: the data starts from epoch 0")


def _device_type(model: nn.Module) -> str:
    """Device type (``"cuda"``, ``"cpu"``) of the model's first parameter."""
    return next(model.parameters()).device.type


class AMPTrainer(SimpleTrainer):
    """:class:`SimpleTrainer` with the forward pass under ``torch.autocast``.

    Args:
        model: see :class:`SimpleTrainer`.
        data_loader: see :class:`SimpleTrainer`.
        optimizer: see :class:`SimpleTrainer`.
        routed_block_indexes: see :class:`SimpleTrainer`.
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
        routed_block_indexes: Sequence[int] = (),
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
        super().__init__(model, data_loader, optimizer, routed_block_indexes)
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
