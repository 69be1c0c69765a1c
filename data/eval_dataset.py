"""Dataset over the items of a test-set folder, for inference and evaluation.

Samples hold the files' levels, not floats: the RGB image as uint8 (or uint16 for 16-bit files),
the trimap and the ground-truth alpha as 8-bit maps, so a loader moves a quarter of the bytes and
the float copy is made once, where the model runs (``predictor.matting``: image / 255 or / 65535,
trimap / 255, as the official inference). A trimap must be an 8-bit single-channel map of the
values 0, 128 and 255 (others are snapped to the nearest with ``snap_trimap``). See
``data.image_io`` for the conversions of grayscale, RGBA and 16-bit files.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from data.image_io import BadSampleError, read_map_u8, read_rgb_levels, read_trimap_levels
from data.readers import MattingItem, scan_test_set

__all__ = ["MattingEvalDataset"]


def _check_size(path: Path, array: np.ndarray, image: np.ndarray, image_path: Path) -> None:
    if array.shape[:2] != image.shape[:2]:
        raise BadSampleError(
            path,
            f"size {array.shape[1]}x{array.shape[0]} differs from image {image_path.name} "
            f"{image.shape[1]}x{image.shape[0]} (W x H)",
        )


class MattingEvalDataset(torch.utils.data.Dataset):
    """Test images with their trimaps (and alphas when the folder has them).

    A sample is a dict with ``image`` ``[3, H, W]`` RGB levels (uint8, or uint16 for 16-bit
    files), ``trimap`` ``[1, H, W]`` uint8, ``alpha`` ``[1, H, W]`` uint8 (the 8-bit levels the
    metrics compare) only for items that have one, and ``image_name`` (the image's file name).
    Images differ in size: load with ``batch_size=1`` (or ``None``).

    Args:
        folder: test-set folder (see ``data.readers`` for the layouts).
        layout: layout name; ``None`` detects it.
        items: explicit items instead of scanning ``folder`` (then ``folder`` and ``layout`` are
            ignored).
        snap_trimap: move trimap values other than 0, 128 and 255 to the nearest of them
            (:func:`data.trimap.snap_trimap`) instead of refusing the item.

    Raises (per item, from ``__getitem__``):
        BadSampleError: unreadable or truncated file, trimap that is not 8-bit single-channel
            or (without ``snap_trimap``) holds other values than 0, 128 and 255, colour alpha, or
            trimap/alpha size differing from the image; the exception's
            ``path`` names the file, so callers can report it and skip the item.
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        layout: str | None = None,
        items: Sequence[MattingItem] | None = None,
        snap_trimap: bool = False,
    ) -> None:
        if items is None:
            if folder is None:
                raise ValueError("give a test-set folder or a list of items")
            items = scan_test_set(folder, layout).items
        self.items = list(items)
        self.snap_trimap = snap_trimap

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor | str]:
        item = self.items[idx]
        image = read_rgb_levels(item.image_path)
        trimap = read_trimap_levels(item.trimap_path, snap=self.snap_trimap)
        _check_size(item.trimap_path, trimap, image, item.image_path)
        sample: dict[str, torch.Tensor | str] = {
            "image": torch.from_numpy(image).permute(2, 0, 1),  # [H, W, 3] -> [3, H, W] view
            "trimap": torch.from_numpy(trimap[None]),
            "image_name": item.image_path.name,
        }
        if item.alpha_path is not None:
            alpha = read_map_u8(item.alpha_path)
            _check_size(item.alpha_path, alpha, image, item.image_path)
            sample["alpha"] = torch.from_numpy(alpha[None])
        return sample
