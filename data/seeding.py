"""Random streams of data loading: one numpy Generator per training sample.

A training sample is named by a :class:`SampleKey` ``(epoch, index)``: the pass over the data set
and the index in the data set. The training sampler (``data.build.TrainSampler``) yields keys,
and a dataset that augments (``DIMTrainDataset``) draws every random number of a sample from
``sample_generator(seed, key)``, seeded from ``(seed, epoch, index)`` alone. So a sample's
augmentation does not depend on which DataLoader worker or rank builds it, on how many workers
there are, or on the samples before it: a run resumed in the middle of an epoch, with or without
workers, sees the same samples as the uninterrupted run.
"""

from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["SampleKey", "init_worker", "sample_generator"]


class SampleKey(NamedTuple):
    """One training sample: the data pass it belongs to and its index in the data set."""

    epoch: int
    index: int


def sample_generator(seed: int, key: SampleKey) -> np.random.Generator:
    """The generator of one sample's random draws.

    Args:
        seed: base seed (non-negative).
        key: the sample.

    Returns:
        A PCG64 generator seeded from ``SeedSequence([seed, key.epoch, key.index])``.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, key.epoch, key.index]))


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: single-threaded OpenCV in loading workers (they already
    run in parallel; OpenCV's threads would oversubscribe the cores). No seeding: samples carry
    their own random streams.

    Args:
        worker_id: index of the worker, given by the DataLoader.
    """
    cv2.setNumThreads(0)
