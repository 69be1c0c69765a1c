"""Training data loader: a distributed, epoch-shuffled sampler of sample keys over a dataset.

How a training run stays reproducible, resumed or not:

- ``TrainSampler`` shards and shuffles the dataset over ranks like ``DistributedSampler`` and
  yields :class:`~data.seeding.SampleKey` ``(epoch, index)`` pairs; the dataset seeds each sample's
  augmentation from ``(seed, epoch, index)`` (``data/seeding.py``). The trainer calls
  ``sampler.set_epoch(epoch)`` before each pass.
- The sampler runs in the training process, so its position is the trainer's to save: a resumed
  run calls ``sampler.skip(n)`` to start a pass after its first ``n`` keys, which are never
  loaded or decoded.
- Loading workers are persistent (started once, not at every pass: spawned ranks start their
  workers by spawning, which costs seconds each) and take their seeds from the loader's own
  generator, so iterating the loader never moves torch's global generator (the routers' gumbel
  noise, whose state the trainer checkpoints).

``official_order=True`` reproduces the official sample order instead: the official trainer never
calls ``set_epoch``, so every epoch repeats the permutation of epoch 0, and its
``DistributedSampler`` pads the last round of ranks with repeated indices instead of dropping it
(see also ``DIMTrainDataset``'s file order).

References: detectron2 ``detectron2/data/build.py`` (interface only); PyTorch
``DistributedSampler``.
"""

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from data.seeding import SampleKey, init_worker
from utils import comm

__all__ = ["TrainSampler", "build_train_loader"]


class TrainSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, one shard per rank) that yields sample keys and can
    start a pass in its middle.

    Works without a process group (one rank).

    Args:
        dataset: the training set.
        seed: seed of the shuffle.
        official_order: every epoch the permutation of epoch 0, and the last round of ranks
            padded with repeated indices, as the official trainer's sampler; False: a new
            permutation every epoch and the incomplete last round dropped.

    Attributes:
        data_epoch: the pass the keys belong to (set by :meth:`set_epoch`).
    """

    def __init__(self, dataset: Dataset, *, seed: int = 0, official_order: bool = False) -> None:
        super().__init__(
            dataset,
            num_replicas=comm.get_world_size(),
            rank=comm.get_rank(),
            shuffle=True,
            seed=seed,
            drop_last=not official_order,
        )
        self.official_order = official_order
        self.data_epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (reshuffled, unless in the official order)."""
        self.data_epoch = epoch
        if not self.official_order:
            super().set_epoch(epoch)

    def skip(self, num_samples: int) -> None:
        """Start the next pass after its first ``num_samples`` keys (to resume inside a pass)."""
        self._skip = num_samples

    def __iter__(self) -> Iterator[SampleKey]:
        indices = list(super().__iter__())[self._skip :]
        self._skip = 0
        return iter([SampleKey(self.data_epoch, index) for index in indices])


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    seed: int = 0,
    official_order: bool = False,
    pin_memory: bool = True,
) -> DataLoader:
    """The training loader of the official recipe: per-rank batches, incomplete ones dropped.

    Args:
        dataset: the training set (e.g. ``DIMTrainDataset``), built in this process; it is
            indexed with :class:`~data.seeding.SampleKey`.
        batch_size: samples per rank and iteration (16 per GPU for MEMatte-S).
        num_workers: loading processes per rank (persistent); 0 loads in the training process.
        seed: seed of the shuffle and of the workers' torch seeds.
        official_order: the official sample order (see :class:`TrainSampler`).
        pin_memory: page-locked batches for faster host-to-GPU copies (ignored without CUDA).

    Returns:
        A finite loader over one epoch; the trainer cycles it and calls ``sampler.set_epoch``.

    Raises:
        ValueError: the rank's shard of the dataset holds less than one batch.
    """
    sampler = TrainSampler(dataset, seed=seed, official_order=official_order)
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
        worker_init_fn=init_worker,
        pin_memory=pin_memory and torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
