"""Logging while a tqdm progress bar is shown: log lines above the bar, not through it.

:func:`logging_above_progress_bar` routes this process's console logging through
``tqdm.write`` (tqdm's ``logging_redirect_tqdm``), which clears the bar, prints the line and
redraws the bar. Worker processes (a ``DataLoader``'s, a process pool's) have their own console
handlers and would write into the bar's line: the function it yields, run in each worker
(``worker_init_fn``, ``initializer``), sends their records to this process instead, where they
go through the same handlers (Python's logging cookbook: a ``QueueHandler`` in each worker, a
``QueueListener`` here).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import logging.handlers
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["logging_above_progress_bar"]


class _ToLogger(logging.Handler):
    """Hands a record from a worker to the logger of its name in this process."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def _send_logs_to(queue: Any, *_worker_id: int) -> None:
    """In a worker process: its log records go to ``queue`` instead of its own handlers."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(queue))


@contextlib.contextmanager
def logging_above_progress_bar() -> Iterator[Callable[..., None]]:
    """Console logging through tqdm while a bar is shown, this process's and its workers'.

    Yields:
        The function to run in each worker process at its start (it takes and ignores a
        ``DataLoader`` worker id).
    """
    queue = multiprocessing.Queue()
    listener = logging.handlers.QueueListener(queue, _ToLogger())
    with logging_redirect_tqdm():
        listener.start()
        try:
            yield functools.partial(_send_logs_to, queue)
        finally:
            listener.stop()  # handles the records sent before it returns
    queue.close()
    queue.join_thread()
