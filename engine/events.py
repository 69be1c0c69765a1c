"""Event storage for training metrics, and the writers that flush it.

Hooks and the trainer put scalars and images into the current :class:`EventStorage`; periodic
writers (:class:`JSONWriter`, :class:`TensorboardWriter`, :class:`CommonMetricPrinter`) read it.

References: detectron2 ``detectron2/utils/events.py`` (interface only).
"""

import datetime
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import torch
from fvcore.common.history_buffer import HistoryBuffer
from torch.utils.tensorboard import SummaryWriter

from utils.file_io import atomic_write
from utils.memory import MIB, peak_memory_bytes

__all__ = [
    "CommonMetricPrinter",
    "EventStorage",
    "EventWriter",
    "JSONWriter",
    "TensorboardWriter",
    "get_event_storage",
]

logger = logging.getLogger(__name__)

# Default number of recent values that smoothed scalars are the median of.
DEFAULT_WINDOW = 20
# Number of recent iteration times the ETA is estimated from (median).
ETA_WINDOW = 1000

_CURRENT_STORAGE_STACK: list["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    """The innermost :class:`EventStorage` that is open (``with EventStorage(): ...``).

    Raises:
        RuntimeError: no storage is open.
    """
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError(
            "get_event_storage() needs an open EventStorage (use `with EventStorage()`)"
        )
    return _CURRENT_STORAGE_STACK[-1]


class EventStorage:
    """Per-iteration metrics: scalar histories and images waiting to be written.

    Args:
        start_iter: the iteration the storage starts counting from.
    """

    def __init__(self, start_iter: int = 0) -> None:
        self._history: dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: dict[str, bool] = {}
        self._latest: dict[str, tuple[float, int]] = {}
        self._images: list[tuple[str, torch.Tensor, int]] = []
        self._iter = start_iter

    @property
    def iter(self) -> int:
        """The current iteration; scalars and images are recorded under it."""
        return self._iter

    @iter.setter
    def iter(self, value: int) -> None:
        self._iter = int(value)

    def put_scalar(
        self,
        name: str,
        value: float | torch.Tensor,
        smoothing_hint: bool = True,
        cur_iter: int | None = None,
    ) -> None:
        """Record a scalar.

        Args:
            name: metric name, e.g. ``loss_known`` or ``token_ratio/block0``.
            value: a number or a one-element tensor.
            smoothing_hint: writers may report the median of recent values rather than the latest
                (losses: yes; learning rate, evaluation results: no). Must not change per name.
            cur_iter: iteration to record under; defaults to :attr:`iter`.

        Raises:
            ValueError: ``smoothing_hint`` differs from the one this name was first put with.
        """
        value = float(value)
        iteration = self._iter if cur_iter is None else int(cur_iter)
        self._history[name].update(value, iteration)
        self._latest[name] = (value, iteration)
        previous_hint = self._smoothing_hints.setdefault(name, smoothing_hint)
        if previous_hint != smoothing_hint:
            raise ValueError(f"Scalar {name!r} was put with smoothing_hint={previous_hint} before")

    def put_scalars(
        self, *, smoothing_hint: bool = True, cur_iter: int | None = None, **scalars: float
    ) -> None:
        """Record several scalars with the same smoothing hint (see :meth:`put_scalar`)."""
        for name, value in scalars.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def put_image(self, name: str, image: torch.Tensor) -> None:
        """Queue an image for the writers; it is dropped after the next write.

        Args:
            name: image tag, e.g. ``train/alpha_pred``.
            image: ``[C, H, W]`` tensor, float in [0, 1] or uint8, C in {1, 3}.
        """
        self._images.append((name, image.detach().cpu(), self._iter))

    @property
    def images(self) -> list[tuple[str, torch.Tensor, int]]:
        """Queued ``(name, [C, H, W] image, iteration)`` entries."""
        return self._images

    def clear_images(self) -> None:
        """Drop the queued images (called by the writer that wrote them)."""
        self._images = []

    def history(self, name: str) -> HistoryBuffer:
        """All recorded ``(value, iteration)`` pairs of one scalar.

        Raises:
            KeyError: no scalar of that name has been put.
        """
        if name not in self._history:
            raise KeyError(f"No history for scalar {name!r}")
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        """The history buffers of all scalars."""
        return dict(self._history)

    def latest(self) -> dict[str, tuple[float, int]]:
        """Latest ``(value, iteration)`` of every scalar."""
        return dict(self._latest)

    def latest_with_smoothing_hint(
        self, window: int = DEFAULT_WINDOW
    ) -> dict[str, tuple[float, int]]:
        """Like :meth:`latest`, but smoothed scalars report the median of their last ``window``
        values (with the iteration of the latest one)."""
        result = {}
        for name, (value, iteration) in self._latest.items():
            if self._smoothing_hints[name]:
                value = float(self._history[name].median(window))
            result[name] = (value, iteration)
        return result

    def smoothing_hints(self) -> dict[str, bool]:
        """The smoothing hint of every scalar."""
        return dict(self._smoothing_hints)

    def __enter__(self) -> Self:
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not _CURRENT_STORAGE_STACK or _CURRENT_STORAGE_STACK[-1] is not self:
            raise RuntimeError("EventStorage contexts must be exited in reverse order of entry")
        _CURRENT_STORAGE_STACK.pop()


class EventWriter:
    """Base class of the writers: ``start()`` before the first write, ``write()`` reads the
    current storage, ``close()`` releases."""

    def start(self, start_iter: int) -> None:
        """Prepare to write a run that starts (or resumes) at iteration ``start_iter``."""

    def write(self) -> None:
        """Write what is new in the current :class:`EventStorage`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files and handles."""


class _UnwrittenScalars:
    """Tracks, per scalar name, the last iteration already written, so each value is written once
    (results put at an iteration that was already written, e.g. a final evaluation, still are)."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._last_written: dict[str, int] = {}

    def pop(self, storage: EventStorage) -> dict[int, dict[str, float]]:
        """New ``{iteration: {name: value}}`` since the previous call, marked as written."""
        new: dict[int, dict[str, float]] = defaultdict(dict)
        for name, (value, iteration) in storage.latest_with_smoothing_hint(self._window).items():
            if iteration > self._last_written.get(name, -1):
                new[iteration][name] = value
                self._last_written[name] = iteration
        return dict(sorted(new.items()))


def _rows_before(path: Path, start_iter: int) -> list[str]:
    """The complete JSON lines of ``path`` whose ``iteration`` is below ``start_iter`` (a line
    cut short by a killed process is dropped)."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("iteration", start_iter) < start_iter:
            kept.append(line)
    return kept


class JSONWriter(EventWriter):
    """Append scalars to a JSON-lines file (``metrics.json``): one object per iteration.

    Each line is ``{"iteration": i, name: value, ...}`` with smoothed values where hinted. At
    :meth:`start`, rows of iterations the run is about to (re)do are dropped from an existing
    file, so a resumed run continues it without duplicates and a new run replaces it.

    Args:
        json_file: path of the file.
        window: smoothing window (see :meth:`EventStorage.latest_with_smoothing_hint`).
    """

    def __init__(self, json_file: str | os.PathLike, window: int = DEFAULT_WINDOW) -> None:
        self._path = Path(json_file)
        self._file: IO[str] | None = None
        self._unwritten = _UnwrittenScalars(window)

    def start(self, start_iter: int) -> None:
        """Keep only the rows before ``start_iter`` (rewritten atomically), then open for
        appending."""
        if self._path.is_file():
            kept = _rows_before(self._path, start_iter)
            text = "".join(f"{line}\n" for line in kept)
            atomic_write(self._path, lambda file: file.write(text.encode("utf-8")))
        self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self) -> None:
        """Append one line per iteration that has unwritten scalars.

        Raises:
            RuntimeError: :meth:`start` was not called.
        """
        if self._file is None:
            raise RuntimeError(f"JSONWriter({self._path}).start() must come before write()")
        for iteration, scalars in self._unwritten.pop(get_event_storage()).items():
            self._file.write(json.dumps({"iteration": iteration, **scalars}, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()


class TensorboardWriter(EventWriter):
    """Write scalars and queued images to TensorBoard event files.

    The event file is created at :meth:`start`; a resumed run (``start_iter > 0``) tells
    TensorBoard to hide the earlier runs' events from ``start_iter`` on (``purge_step``).

    Args:
        log_dir: directory of the event files.
        window: smoothing window (see :meth:`EventStorage.latest_with_smoothing_hint`).
        **kwargs: passed to :class:`torch.utils.tensorboard.SummaryWriter`.
    """

    def __init__(self, log_dir: str | os.PathLike, window: int = DEFAULT_WINDOW, **kwargs) -> None:
        self._log_dir = str(log_dir)
        self._kwargs = kwargs
        self._writer: SummaryWriter | None = None
        self._unwritten = _UnwrittenScalars(window)

    def start(self, start_iter: int) -> None:
        """Open the event file."""
        purge_step = start_iter if start_iter > 0 else None
        self._writer = SummaryWriter(log_dir=self._log_dir, purge_step=purge_step, **self._kwargs)

    def write(self) -> None:
        """Write unwritten scalars and all queued images, then drop the images.

        Raises:
            RuntimeError: :meth:`start` was not called.
        """
        if self._writer is None:
            raise RuntimeError(f"TensorboardWriter({self._log_dir}).start() must come first")
        storage = get_event_storage()
        for iteration, scalars in self._unwritten.pop(storage).items():
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, iteration)
        for name, image, iteration in storage.images:
            self._writer.add_image(name, image, iteration, dataformats="CHW")
        storage.clear_images()
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Log training progress to the console: ETA, iteration, losses, times, lr, peak memory.

    Args:
        max_iter: the iteration training stops at (for the ETA).
        window: losses and times are medians / averages over this many recent iterations.
    """

    def __init__(self, max_iter: int, window: int = DEFAULT_WINDOW) -> None:
        self._max_iter = max_iter
        self._window = window
        self._last_printed: int | None = None

    def _eta(self, storage: EventStorage) -> str:
        """Remaining time from the median iteration time, also stored as ``eta_seconds``."""
        if "time" not in storage.histories():
            return "N/A"
        seconds = storage.history("time").median(ETA_WINDOW) * (self._max_iter - storage.iter - 1)
        storage.put_scalar("eta_seconds", seconds, smoothing_hint=False)
        return str(datetime.timedelta(seconds=int(seconds)))

    def write(self) -> None:
        """Log one line for the current iteration (once per iteration; nothing after training,
        when the storage points at ``max_iter``)."""
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._last_printed or iteration >= self._max_iter:
            return
        self._last_printed = iteration
        histories = storage.histories()
        fields = [f"eta: {self._eta(storage)}", f"iter: {iteration}"]
        fields += [
            f"{name}: {buffer.median(self._window):.4g}"
            for name, buffer in sorted(histories.items())
            if "loss" in name
        ]
        for name in ("time", "data_time"):
            if name in histories:
                fields.append(f"{name}: {histories[name].avg(self._window):.4f}")
        if "lr" in histories:
            fields.append(f"lr: {histories['lr'].latest():.5g}")
        if torch.cuda.is_available():
            max_mem_mib = peak_memory_bytes("cuda") / MIB
            fields.append(f"max_mem: {max_mem_mib:.0f}M")
        logger.info("  ".join(fields))
