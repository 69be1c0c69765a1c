"""Write a small synthetic matting dataset: DIM training layout and Composition-1k test layout.

Foregrounds are procedural: soft-edged blobs, hair-like anti-aliased strands and semi-transparent
veils over a smooth colour field; backgrounds are gradients, noise or stripes. Nothing is
downloaded, and the same arguments give byte-identical files: running the tool again with the same
arguments finds the dataset in place and writes nothing; other arguments over an existing dataset
need ``--overwrite``.

Output::

    OUT/train/fg/fg_000.png ...      foreground colours (RGB, alpha-free)
    OUT/train/alpha/fg_000.png ...   alpha mattes (8-bit)
    OUT/train/bg/bg_000.jpg ...      backgrounds
    OUT/test/merged/test_000.png ... composites
    OUT/test/trimaps/test_000.png    trimaps {0, 128, 255} from the alpha by erosion
    OUT/test/alpha_copy/test_000.png ground-truth alphas

Usage::

    python tools/make_synthetic_dataset.py --out datasets/synthetic --seed 0
"""

import argparse
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

# Running as `python tools/make_synthetic_dataset.py` puts tools/ (not the repository root) on
# sys.path; add the root so that the `data` package imports.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from data.image_io import encode_image, write_image  # noqa: E402
from data.trimap import erosion_trimap  # noqa: E402

logger = logging.getLogger(__name__)

# Sub-folders written by this tool (relative to --out); only these are replaced by --overwrite.
TRAIN_DIRS = ("train/fg", "train/alpha", "train/bg")
TEST_DIRS = ("test/merged", "test/trimaps", "test/alpha_copy")
# Image sides are drawn in size * [low, high): foregrounds, backgrounds.
FG_SIDE_RANGE = (0.8, 1.2)
BG_SIDE_RANGE = (1.0, 1.5)
# Trimap unknown band: erosion kernel side as a fraction of the image side.
TRIMAP_BAND_RANGE = (0.02, 0.06)
# cv2.polylines/ellipse use fixed-point coordinates with this many fractional bits (sub-pixel).
_SHIFT = 4
_ONE = 1 << _SHIFT
ALPHA_MAX = 255.0  # 8-bit alpha scale


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency colour noise ``[H, W, 3]`` float32 in [0, 1]: a coarse grid, upsampled."""
    grid = rng.random((cells, cells, 3)).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)


def _strand(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float
) -> np.ndarray:
    """Points ``[N, 2]`` (x, y, fixed point) of a wavy hair strand starting at ``start``."""
    steps = max(int(length / 2), 2)
    turns = np.cumsum(rng.normal(0.0, 0.15, steps))  # slowly drifting direction
    angles = heading + turns
    deltas = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [N, 2], 2 px per step
    points = start + np.cumsum(deltas, axis=0)
    return np.round(points * _ONE).astype(np.int32)


def make_foreground(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One procedural foreground.

    Args:
        rng: source of randomness.
        size: nominal side in pixels.

    Returns:
        ``(fg [H, W, 3] uint8 BGR, alpha [H, W] uint8)``.
    """
    height, width = (int(size * rng.uniform(*FG_SIDE_RANGE)) for _ in range(2))
    center = np.array([width / 2, height / 2]) * rng.uniform(0.85, 1.15, 2)
    colour = _smooth_field(rng, height, width, cells=4)

    # Opaque body: a few overlapping ellipses, edges softened by a blur of a few pixels.
    body = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        offset = rng.normal(0.0, 0.08, 2) * (width, height)
        axes = rng.uniform(0.12, 0.25, 2) * (width, height)
        c = tuple(int(v) for v in np.round((center + offset) * _ONE))
        a = tuple(int(v) for v in np.round(axes * _ONE))
        cv2.ellipse(body, c, a, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    sigma = rng.uniform(0.8, 2.5)
    alpha = cv2.GaussianBlur(body.astype(np.float32) / 255, (0, 0), sigma)

    # Semi-transparent veil (glass, smoke): a wide blurred ellipse at partial opacity.
    veil = np.zeros((height, width), np.uint8)
    axes = rng.uniform(0.15, 0.3, 2) * (width, height)
    offset = rng.normal(0.0, 0.2, 2) * (width, height)
    c = tuple(int(v) for v in np.round((center + offset) * _ONE))
    a = tuple(int(v) for v in np.round(axes * _ONE))
    cv2.ellipse(veil, c, a, 0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    veil_alpha = cv2.GaussianBlur(veil.astype(np.float32) / 255, (0, 0), rng.uniform(3, 8))
    alpha = np.maximum(alpha, veil_alpha * rng.uniform(0.25, 0.7))

    # Hair: thin anti-aliased strands leaving the body outwards, with their own colour.
    strands = np.zeros((height, width), np.uint8)
    hair_colour = rng.random(3)
    boundary = np.argwhere(cv2.Canny(body, 50, 150) > 0)[:, ::-1]  # [K, 2] (x, y)
    for _ in range(int(rng.integers(20, 60)) if len(boundary) else 0):
        start = boundary[rng.integers(len(boundary))].astype(np.float64)
        heading = np.arctan2(*(start - center)[::-1]) + rng.normal(0.0, 0.4)
        points = _strand(rng, start, heading, rng.uniform(0.08, 0.3) * size)
        cv2.polylines(strands, [points], False, 255, 1, cv2.LINE_AA, _SHIFT)
    strand_alpha = strands.astype(np.float32) / 255 * rng.uniform(0.6, 1.0)
    colour = colour * (1 - strand_alpha[:, :, None]) + hair_colour * strand_alpha[:, :, None]
    alpha = np.maximum(alpha, strand_alpha)

    fg = np.round(colour * 255).astype(np.uint8)
    return fg, np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8)


def make_background(rng: np.random.Generator, size: int, kind: int) -> np.ndarray:
    """One procedural background ``[H, W, 3]`` uint8 BGR.

    Args:
        rng: source of randomness.
        size: nominal side in pixels.
        kind: 0 gradient, 1 noise, 2 stripes (others wrap around).
    """
    height, width = (int(size * rng.uniform(*BG_SIDE_RANGE)) for _ in range(2))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    # Coordinate along a random direction, normalised to about [0, 1].
    along = (xs * np.cos(angle) + ys * np.sin(angle)) / max(height, width)
    low, high = rng.random(3), rng.random(3)
    if kind % 3 == 0:
        t = np.clip(along - along.min(), 0, 1)[:, :, None]
        image = low * (1 - t) + high * t + _smooth_field(rng, height, width, 3) * 0.2
    elif kind % 3 == 1:
        image = _smooth_field(rng, height, width, cells=int(rng.integers(4, 12)))
        image = image + rng.normal(0.0, 0.08, image.shape)
    else:
        period = rng.uniform(0.03, 0.15)
        t = (np.sin(2 * np.pi * along / period) > 0).astype(np.float32)[:, :, None]
        image = low * (1 - t) + high * t
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _fit_background(bg: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``bg`` to cover ``height x width`` and crop its top-left corner."""
    scale = max(height / bg.shape[0], width / bg.shape[1], 1.0)
    if scale > 1.0:
        new_size = (int(np.ceil(bg.shape[1] * scale)), int(np.ceil(bg.shape[0] * scale)))
        bg = cv2.resize(bg, new_size, interpolation=cv2.INTER_CUBIC)
    return bg[:height, :width]


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
        bg = _fit_background(make_background(rng, size, kind=i), height, width)
        a = alpha.astype(np.float32)[:, :, None] / 255
        merged = np.round(fg * a + bg * (1 - a)).astype(np.uint8)
        band = int(round(max(height, width) * rng.uniform(*TRIMAP_BAND_RANGE))) | 1  # odd side
        yield f"test/merged/test_{i:03d}.png", merged
        yield f"test/trimaps/test_{i:03d}.png", erosion_trimap(alpha / ALPHA_MAX, band, band)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-fg", type=int, default=12, help="training foregrounds")
    parser.add_argument("--num-bg", type=int, default=24, help="training backgrounds")
    parser.add_argument("--num-test", type=int, default=6, help="test images")
    parser.add_argument("--size", type=int, default=256, help="nominal image side (px)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset made with other arguments (the same arguments write nothing)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        make_synthetic_dataset(
            args.out,
            args.seed,
            num_fg=args.num_fg,
            num_bg=args.num_bg,
            num_test=args.num_test,
            size=args.size,
            overwrite=args.overwrite,
        )
    except FileExistsError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
