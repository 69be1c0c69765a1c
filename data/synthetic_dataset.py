"""A small synthetic matting dataset on disk, in the DIM training layout and the Composition-1k test
layout, from the procedural images of :mod:`data.synthetic`.

The same arguments give byte-identical files: writing again with the same arguments finds the
dataset in place and writes nothing; other arguments over an existing dataset need
``overwrite``. Layout::

    OUT/train/fg/fg_000.png ...      foreground colours (RGB, alpha-free)
    OUT/train/alpha/fg_000.png ...   alpha mattes (8-bit)
    OUT/train/bg/bg_000.jpg ...      backgrounds
    OUT/test/merged/test_000.png ... composites
    OUT/test/trimaps/test_000.png    trimaps {0, 128, 255} from the alpha by erosion
    OUT/test/alpha_copy/test_000.png ground-truth alphas
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data.image_io import encode_image, write_image
from data.synthetic import fit_background, make_background, make_foreground
from data.trimap import erosion_trimap
from utils.levels import UINT8_MAX

__all__ = ["make_synthetic_dataset"]

logger = logging.getLogger(__name__)

# Sub-folders written by this tool (relative to --out); only these are replaced by --overwrite.
TRAIN_DIRS = ("train/fg", "train/alpha", "train/bg")


TEST_DIRS = ("test/merged", "test/trimaps", "test/alpha_copy")


# Trimap unknown band: erosion kernel side as a fraction of the image side.
TRIMAP_BAND_RANGE = (0.02, 0.06)


def _dataset_images(
    seed: int, num_fg: int, num_bg: int, num_test: int, size: int
) -> Iterator[tuple[str, np.ndarray]]:
    """Every file of the dataset, in order: ``(path relative to the output folder, image)``."""
    fg_seeds, bg_seeds, test_seeds = np.random.SeedSequence(seed).spawn(3)
    for i, item_seed in enumerate(fg_seeds.spawn(num_fg)):
        fg, alpha = make_foreground(np.random.default_rng(item_seed), size)
        yield f"train/fg/fg_{i:03d}.png", fg
        yield f"train/alpha/fg_{i:03d}.png", alpha
    for i, item_seed in enumerate(bg_seeds.spawn(num_bg)):
        yield f"train/bg/bg_{i:03d}.jpg", make_background(np.random.default_rng(item_seed), size, i)
    for i, item_seed in enumerate(test_seeds.spawn(num_test)):
        rng = np.random.default_rng(item_seed)
        fg, alpha = make_foreground(rng, size)
        height, width = alpha.shape
        bg = fit_background(make_background(rng, size, kind=i), height, width)
        a = alpha.astype(np.float32)[:, :, None] / UINT8_MAX
        merged = np.round(fg * a + bg * (1 - a)).astype(np.uint8)
        band = int(round(max(height, width) * rng.uniform(*TRIMAP_BAND_RANGE))) | 1  # odd side
        yield f"test/merged/test_{i:03d}.png", merged
        yield f"test/trimaps/test_{i:03d}.png", erosion_trimap(alpha / UINT8_MAX, band, band)
        yield f"test/alpha_copy/test_{i:03d}.png", alpha


def _existing_files(out_dir: Path) -> set[str]:
    """Files (relative paths) in the tool's sub-folders of ``out_dir``."""
    return {
        str(path.relative_to(out_dir))
        for name in TRAIN_DIRS + TEST_DIRS
        if (out_dir / name).is_dir()
        for path in (out_dir / name).iterdir()
    }


def _holds(out_dir: Path, existing: set[str], images: Iterator[tuple[str, np.ndarray]]) -> bool:
    """Whether the ``existing`` files are exactly ``images``, byte for byte (stops at the first
    difference)."""
    expected = set()
    for relative, image in images:
        path = out_dir / relative
        if relative not in existing or path.read_bytes() != encode_image(path, image):
            return False
        expected.add(relative)
    return expected == existing


def make_synthetic_dataset(
    out_dir: str | Path,
    seed: int = 0,
    *,
    num_fg: int = 12,
    num_bg: int = 24,
    num_test: int = 6,
    size: int = 256,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the synthetic training and test sets under ``out_dir``.

    If the tool's sub-folders already hold exactly the files these arguments make, nothing is
    written (re-running a recipe is harmless).

    Args:
        out_dir: output folder (created if needed).
        seed: seed of every random choice; same arguments -> same bytes.
        num_fg: training foreground/alpha pairs.
        num_bg: training backgrounds (= training samples per epoch).
        num_test: test images.
        size: nominal image side in pixels.
        overwrite: replace the tool's sub-folders if they hold other files.

    Returns:
        ``{"train": out_dir / "train", "test": out_dir / "test"}``.

    Raises:
        FileExistsError: the sub-folders hold other files and ``overwrite`` is False.
    """
    out = Path(out_dir)
    folders = {"train": out / "train", "test": out / "test"}
    arguments = (seed, num_fg, num_bg, num_test, size)
    existing = _existing_files(out)
    if existing and not overwrite:
        if _holds(out, existing, _dataset_images(*arguments)):
            logger.info("%s already holds this dataset (same arguments): nothing to write", out)
            return folders
        raise FileExistsError(
            f"{out} holds another synthetic dataset (other arguments or changed files); pass "
            "overwrite=True (--overwrite) to replace it"
        )
    for name in TRAIN_DIRS + TEST_DIRS:
        if overwrite and (out / name).exists():
            shutil.rmtree(out / name)
        (out / name).mkdir(parents=True, exist_ok=True)
    for relative, image in _dataset_images(*arguments):
        write_image(out / relative, image)
    logger.info(
        "wrote %d fg/alpha pairs and %d backgrounds to %s, %d test images to %s",
        num_fg,
        num_bg,
        folders["train"],
        num_test,
        folders["test"],
    )
    return folders
