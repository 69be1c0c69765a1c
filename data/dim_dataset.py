"""Training set: DIM foregrounds composited on the fly over backgrounds (COCO in the paper).

References: ViTMatte (data/dim_dataset.py, ``ImageFileTrain`` + ``DataGenerator`` in phase
``train``), from GCA-Matting; MEMatte trains on it unchanged.

Folder layout (files matched by stem, any of ``IMAGE_EXTENSIONS``)::

    fg_dir/     a.jpg  b.png ...   foreground colours
    alpha_dir/  a.jpg  b.png ...   alpha mattes, same size as their foreground
    bg_dir/     x.jpg  y.jpg ...   backgrounds (COCO train2014 in the official recipe)

``fg_dir`` and ``alpha_dir`` may also be equally long lists of folders (several training sets
pooled, e.g. Composition-1k, Distinctions-646 and AM-2K): the i-th alpha folder holds the mattes
of the i-th foreground folder, stems are matched within each pair, and the pairs are pooled in
list order.

One epoch visits every background once: ``len(dataset) == number of backgrounds`` and sample
``idx`` uses background ``idx`` and foreground ``idx % number of foregrounds``. Both lists are
sorted by name; with ``official_order=True`` they are in the official order instead: the
foreground names common to both folders as Python's set intersection lists them, shuffled once
by ``numpy.random.RandomState(0)`` (the set's order follows string hashing: set
``PYTHONHASHSEED`` alike to compare runs), and the backgrounds in ``os.listdir`` order.
"""

import functools
import glob
import logging
import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.image_io import (
    BadSampleError,
    UnreadableImageError,
    list_images,
    list_images_by_stem,
    read_train_alpha,
    read_train_rgb,
)
from data.seeding import SampleKey, sample_generator
from data.transforms import RandomResize, composite_two_foregrounds, train_transforms

logger = logging.getLogger(__name__)

__all__ = ["DIMTrainDataset"]

# Probability of overlaying a second, random foreground (official `_composite_fg`).
TWO_FOREGROUND_PROB = 0.5
# Unreadable files met in a row by one __getitem__ before giving up.
MAX_LOAD_ATTEMPTS = 10
# Random redraws allowed to replace a sample that uses a file already known to be unreadable.
MAX_REDRAWS = 100
# Seed of the official foreground shuffle (``ImageFile.rng = np.random.RandomState(0)``).
OFFICIAL_SHUFFLE_SEED = 0


def _official_foreground_names(fg_dir: str | Path, alpha_dir: str | Path) -> list[str]:
    """Foreground names in the official order: the file-name stems (``glob`` + ``splitext``) of
    both folders, intersected as Python sets, shuffled by ``RandomState(0)``."""
    name_sets = [
        {os.path.splitext(os.path.basename(path))[0] for path in glob.glob(os.path.join(d, "*"))}
        for d in (fg_dir, alpha_dir)
    ]
    names = list(functools.reduce(operator.and_, name_sets))
    np.random.RandomState(OFFICIAL_SHUFFLE_SEED).shuffle(names)
    return names


def _folder_list(folders: str | Path | Sequence[str | Path]) -> list[Path]:
    """One folder, or a sequence of them, as a list of paths."""
    if isinstance(folders, str | Path):
        return [Path(folders)]
    return [Path(folder) for folder in folders]


def _pairs_by_stem(fg_dir: Path, alpha_dir: Path, official_order: bool) -> list[tuple[Path, Path]]:
    """(foreground, alpha) files of one folder pair sharing a stem: sorted by stem, or in the
    official order (see the module docstring).

    Raises:
        FileNotFoundError: no stem in common.
    """
    fgs, alphas = list_images_by_stem(fg_dir), list_images_by_stem(alpha_dir)
    stems = sorted(fgs.keys() & alphas.keys())
    if not stems:
        raise FileNotFoundError(
            f"no foreground/alpha pair in {fg_dir} and {alpha_dir}: {len(fgs)} foreground and "
            f"{len(alphas)} alpha images, none sharing a file stem"
        )
    unmatched = sorted(fgs.keys() ^ alphas.keys())
    if unmatched:
        logger.warning(
            "%d foreground/alpha files without a partner in %s and %s are ignored: %s",
            len(unmatched),
            fg_dir,
            alpha_dir,
            ", ".join(unmatched[:10]),
        )
    if official_order:
        paired = set(stems)
        stems = [name for name in _official_foreground_names(fg_dir, alpha_dir) if name in paired]
    return [(fgs[stem], alphas[stem]) for stem in stems]


def _listdir_images(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` in ``os.listdir`` order (the official background order)."""
    images = set(list_images(folder))
    return [path for path in (Path(folder) / name for name in os.listdir(folder)) if path in images]


class DIMTrainDataset(torch.utils.data.Dataset):
    """On-the-fly composited training samples with the official augmentations.

    Indexed by :class:`~data.seeding.SampleKey` ``(epoch, index)`` (a plain index is epoch 0).
    Each sample is a dict with ``image``, ``fg``, ``bg`` ``[3, S, S]`` float32 in [0, 1] (RGB),
    ``alpha`` ``[1, S, S]`` float32 in [0, 1], ``trimap`` ``[1, S, S]`` float32 in {0, 0.5, 1}
    and ``image_name`` (the foreground's file name), with ``S = crop_size``.

    Every random draw of a sample comes from ``sample_generator(seed, key)``, so the sample does
    not depend on the worker or rank that builds it. Files are read as the official pipeline
    reads them (``read_train_rgb``, ``read_train_alpha``: EXIF orientation applied). An
    unreadable file is logged and another random sample is drawn instead; an alpha whose size
    differs from its foreground raises ``BadSampleError``.

    Args:
        fg_dir: folder of foreground images, or a list of such folders (pooled).
        alpha_dir: folder of alpha mattes, matched to ``fg_dir`` by stem; a list of as many
            folders as ``fg_dir`` when that is a list.
        bg_dir: folder of background images.
        crop_size: side of the square training crop in pixels (official: 512).
        seed: base seed of the augmentations (non-negative).
        official_order: list the files in the official order (see the module docstring) instead
            of sorted by name.

    Raises:
        FileNotFoundError: a folder is missing, has no foreground/alpha pair or no background.
        ValueError: a negative seed, or ``fg_dir`` and ``alpha_dir`` list different numbers
            of folders.
    """

    def __init__(
        self,
        *,
        fg_dir: str | Path | Sequence[str | Path],
        alpha_dir: str | Path | Sequence[str | Path],
        bg_dir: str | Path,
        crop_size: int = 512,
        seed: int = 0,
        official_order: bool = False,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        fg_dirs, alpha_dirs = _folder_list(fg_dir), _folder_list(alpha_dir)
        if len(fg_dirs) != len(alpha_dirs):
            raise ValueError(
                f"{len(fg_dirs)} foreground folders but {len(alpha_dirs)} alpha folders: "
                "fg_dir and alpha_dir must list the folders pairwise"
            )
        for folder in (*fg_dirs, *alpha_dirs, bg_dir):
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"training data folder {folder} does not exist")
        pairs = [
            pair
            for dirs in zip(fg_dirs, alpha_dirs, strict=True)
            for pair in _pairs_by_stem(*dirs, official_order)
        ]
        self.fg_paths = [fg for fg, _ in pairs]
        self.alpha_paths = [alpha for _, alpha in pairs]
        self.bg_paths = _listdir_images(bg_dir) if official_order else list_images(bg_dir)
        if not self.bg_paths:
            raise FileNotFoundError(f"no background image in {bg_dir}")
        self.crop_size = crop_size
        self.seed = seed
        # Official `_composite_fg`: resize to 640 x 640 with probability 1/4 after the overlay.
        self.resize = RandomResize(size=640, prob=0.25)
        self.transform = train_transforms(crop_size)
        self._unreadable: set[Path] = set()  # files that failed to decode, never read again

    def __len__(self) -> int:
        return len(self.bg_paths)

    @property
    def num_foregrounds(self) -> int:
        return len(self.fg_paths)

    def _read_foreground(self, fg_index: int) -> tuple[np.ndarray, np.ndarray]:
        """``fg`` ``[H, W, 3]`` uint8 RGB and ``alpha`` ``[H, W]`` float32 of one pair."""
        fg_path, alpha_path = self.fg_paths[fg_index], self.alpha_paths[fg_index]
        fg, alpha = read_train_rgb(fg_path), read_train_alpha(alpha_path)
        if alpha.shape != fg.shape[:2]:
            raise BadSampleError(
                alpha_path,
                f"alpha is {alpha.shape[1]}x{alpha.shape[0]} but its foreground {fg_path} is "
                f"{fg.shape[1]}x{fg.shape[0]} (W x H)",
            )
        return fg, alpha

    def load(self, idx: int, rng: np.random.Generator) -> dict[str, Any]:
        """Build sample ``idx`` with the given generator (no retry on bad files).

        Args:
            idx: index in ``[0, len(self))``.
            rng: source of all randomness of this sample.

        Returns:
            The sample dict described in the class docstring.

        Raises:
            UnreadableImageError: a file of this sample cannot be read.
            BadSampleError: an alpha does not match its foreground's size.
        """
        fg_index = idx % self.num_foregrounds
        fg, alpha = self._read_foreground(fg_index)
        bg = read_train_rgb(self.bg_paths[idx])
        if rng.random() < TWO_FOREGROUND_PROB:
            # Official draw: a uniform offset added to idx, so the second may equal the first.
            fg2_index = (idx + int(rng.integers(self.num_foregrounds))) % self.num_foregrounds
            if not self._foreground_known_bad(fg2_index):
                fg2, alpha2 = self._read_foreground(fg2_index)
                fg, alpha = composite_two_foregrounds(fg, alpha, fg2, alpha2, rng)
        sample = {"fg": fg, "alpha": alpha, "bg": bg, "image_name": self.fg_paths[fg_index].name}
        return self.transform(self.resize(sample, rng), rng)

    def _foreground_known_bad(self, fg_index: int) -> bool:
        paths = (self.fg_paths[fg_index], self.alpha_paths[fg_index])
        return any(path in self._unreadable for path in paths)

    def _known_bad(self, idx: int) -> bool:
        return (
            self._foreground_known_bad(idx % self.num_foregrounds)
            or self.bg_paths[idx] in self._unreadable
        )

    def _redraw_if_known_bad(self, idx: int, rng: np.random.Generator) -> int:
        for _ in range(MAX_REDRAWS):
            if not self._known_bad(idx):
                return idx
            idx = int(rng.integers(len(self)))
        raise RuntimeError(
            f"almost every sample has an unreadable file: {sorted(self._unreadable)}"
        )

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        key = SampleKey(0, key) if isinstance(key, int) else SampleKey(*key)
        rng = sample_generator(self.seed, key)
        idx = key.index
        for _ in range(MAX_LOAD_ATTEMPTS):
            idx = self._redraw_if_known_bad(idx, rng)
            try:
                return self.load(idx, rng)
            except UnreadableImageError as error:
                logger.warning(
                    "skipping unreadable %s (%s); samples using it are replaced by others",
                    error.path,
                    error.reason,
                )
                self._unreadable.add(error.path)
        raise RuntimeError(
            f"{MAX_LOAD_ATTEMPTS} unreadable files in a row ({sorted(self._unreadable)}); check "
            f"{self.fg_paths[0].parent}, {self.alpha_paths[0].parent} and {self.bg_paths[0].parent}"
        )
