"""Training data loader: a distributed, epoch-seeded sampler over a dataset.

How a training run stays reproducible, resumed or not:

- ``TrainSampler`` shards and shuffles the dataset over ranks like ``DistributedSampler``. The
  trainer calls ``sampler.set_epoch(epoch)`` before each pass; that call also restarts this
  process's random streams from ``(seed, rank, epoch)``: torch's global generator (the router's
  gumbel noise; the seeds the DataLoader gives its workers, which ``seed_worker`` turns into the
  dataset's augmentation streams) and, without workers, the dataset's own stream.
- So everything random inside an epoch depends only on ``(seed, rank, epoch)``. The trainer
  resumes at the start of the next epoch, hence a run stopped and resumed at an epoch boundary
  replays the uninterrupted run exactly.

References: detectron2 ``detectron2/data/build.py`` (interface only); PyTorch
``DistributedSampler``.
"""

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from data.seeding import ReseedableDataset, seed_worker
from engine import comm

__all__ = ["TrainSampler", "build_train_loader", "epoch_seed"]

# The main process (``num_workers=0``) draws from the stream a lone worker 0 would get.
_MAIN_PROCESS_WORKER_ID = 0


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """A 32-bit seed for one ``(seed, rank, epoch)``, decorrelated across all three."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


class TrainSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, equal shard per rank) that reseeds at each epoch.

    See the module docstring. Works without a process group (one rank).

    Args:
        dataset: the training set; a ``ReseedableDataset`` also gets its stream restarted.
        seed: base seed of the shuffle and of the per-epoch streams.
    """

    def __init__(self, dataset: Dataset, *, seed: int = 0) -> None:
        super().__init__(
            dataset,
            num_replicas=comm.get_world_size(),
            rank=comm.get_rank(),
            shuffle=True,
            seed=seed,
            drop_last=True,
        )

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch`` and restart the random streams from ``(seed, rank, epoch)``."""
        super().set_epoch(epoch)
        torch.manual_seed(epoch_seed(self.seed, self.rank, epoch))
        if isinstance(self.dataset, ReseedableDataset):
            # Drawn from the generator just seeded, as a DataLoader draws its workers' seeds.
            stream_seed = int(torch.randint(np.iinfo(np.int32).max, ()).item())
            self.dataset.reseed(_MAIN_PROCESS_WORKER_ID, stream_seed)


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    seed: int = 0,
    pin_memory: bool = True,
) -> DataLoader:
    """The training loader of the official recipe: per-rank batches, incomplete ones dropped.

    Args:
        dataset: the training set (e.g. ``DIMTrainDataset``), built in this process.
        batch_size: samples per rank and iteration (16 per GPU for MEMatte-S).
        num_workers: loading processes per rank; each gets its own stream via ``seed_worker``.
        seed: base seed of the shuffle and the per-epoch random streams.
        pin_memory: page-locked batches for faster host-to-GPU copies (ignored without CUDA).

    Returns:
        A finite loader over one epoch; the trainer cycles it and calls ``sampler.set_epoch``.

    Raises:
        ValueError: the rank's shard of the dataset holds less than one batch.
    """
    sampler = TrainSampler(dataset, seed=seed)
    if len(sampler) < batch_size:
        raise ValueError(
            f"the training set has {len(dataset)} samples, {len(sampler)} per rank: fewer than "
            f"one batch of {batch_size} (lower dataloader.train.batch_size or add data)"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        pin_memory=pin_memory and torch.cuda.is_available(),
        drop_last=True,
    )
