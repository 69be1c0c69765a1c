"""Random streams for data loading: one numpy Generator per (seed, rank, worker, epoch).

How training stays reproducible and decorrelated:

- A dataset that augments (``DIMTrainDataset``) owns a ``numpy.random.Generator`` and draws every
  random number from it. It is built from ``SeedSequence([seed, rank])`` in the main process
  (``num_workers=0``) and from ``SeedSequence([seed, rank, worker_id, torch_worker_seed])`` inside
  a DataLoader worker, set by ``seed_worker`` (pass it as ``worker_init_fn``).
- ``seed`` is the dataset's base seed, ``rank`` the distributed rank read when the dataset is
  built, ``worker_id`` the DataLoader worker index, and ``torch_worker_seed`` the per-worker seed
  PyTorch draws from the main process' torch RNG each time a loader iterator starts (new epoch).
  So no two ranks, workers or epochs share a stream, and a run is replayed exactly by the same
  ``seed`` plus ``torch.manual_seed`` in the main process (which the trainer does).
"""

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info

from engine import comm

__all__ = ["ReseedableDataset", "make_generator", "seed_worker"]


def make_generator(
    seed: int, rank: int, worker_id: int | None = None, torch_worker_seed: int = 0
) -> np.random.Generator:
    """Generator for one data stream.

    Args:
        seed: base seed (non-negative).
        rank: distributed rank.
        worker_id: DataLoader worker index, ``None`` in the main process.
        torch_worker_seed: ``torch.utils.data.get_worker_info().seed`` (ignored when
            ``worker_id`` is None).

    Returns:
        A PCG64 generator seeded from ``SeedSequence([seed, rank])``, or from
        ``SeedSequence([seed, rank, worker_id, torch_worker_seed])`` in a worker.
    """
    entropy = [seed, rank]
    if worker_id is not None:
        entropy += [worker_id, torch_worker_seed]
    return np.random.default_rng(np.random.SeedSequence(entropy))


class ReseedableDataset(torch.utils.data.Dataset):
    """Base for datasets holding their own generator; ``seed_worker`` reseeds them per worker.

    Args:
        seed: base seed (non-negative).
        rank: distributed rank; ``None`` reads it from the default process group now.
    """

    def __init__(self, *, seed: int = 0, rank: int | None = None) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = seed
        self.rank = comm.get_rank() if rank is None else rank
        self._rng: np.random.Generator | None = None

    def reseed(self, worker_id: int | None = None, torch_worker_seed: int = 0) -> None:
        """Restart this dataset's stream for a worker (see the module docstring)."""
        self._rng = make_generator(self.seed, self.rank, worker_id, torch_worker_seed)

    @property
    def rng(self) -> np.random.Generator:
        """The current stream, created for the main process on first use."""
        if self._rng is None:
            self.reseed()
        return self._rng


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: single-threaded OpenCV and a distinct stream per worker.

    Args:
        worker_id: index of the worker, given by the DataLoader.
    """
    cv2.setNumThreads(0)  # workers already run in parallel; OpenCV threads would oversubscribe
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, ReseedableDataset):
        info.dataset.reseed(worker_id, info.seed)
