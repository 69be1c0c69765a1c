"""Dataset over the items of a test-set folder, for inference and evaluation.

Images, trimaps and alphas are read as in the official inference (``to_tensor`` of the files):
values scaled to [0, 1], trimap levels kept as stored (128 -> 128 / 255, not re-quantized); a
trimap must be an 8-bit single-channel map. See ``data.image_io`` for the conversions of
grayscale, RGBA and 16-bit files.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from data.image_io import BadSampleError, read_gray, read_rgb, read_trimap
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

    A sample is a dict with ``image`` ``[3, H, W]`` float32 RGB in [0, 1], ``trimap``
    ``[1, H, W]`` float32 in [0, 1] (file value / 255), ``alpha`` ``[1, H, W]`` float32 in [0, 1]
    only for items that have one, and ``image_name`` (the image's file name). Images differ in
    size: load with ``batch_size=1``.

    Args:
        folder: test-set folder (see ``data.readers`` for the layouts).
        layout: layout name; ``None`` detects it.
        items: explicit items instead of scanning ``folder`` (then ``folder`` and ``layout`` are
            ignored).

    Raises (per item, from ``__getitem__``):
        BadSampleError: unreadable file, trimap that is not 8-bit single-channel, or trimap/alpha
            size differing from the image; the exception's ``path`` names the file, so callers
            can report it and skip the item.
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        layout: str | None = None,
        items: Sequence[MattingItem] | None = None,
    ) -> None:
        if items is None:
            if folder is None:
                raise ValueError("give a test-set folder or a list of items")
            items = scan_test_set(folder, layout).items
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor | str]:
        item = self.items[idx]
        image = read_rgb(item.image_path)
        trimap = read_trimap(item.trimap_path)
        _check_size(item.trimap_path, trimap, image, item.image_path)
        sample: dict[str, torch.Tensor | str] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),  # HWC->CHW
            "trimap": torch.from_numpy(trimap[None]),
            "image_name": item.image_path.name,
        }
        if item.alpha_path is not None:
            alpha = read_gray(item.alpha_path)
            _check_size(item.alpha_path, alpha, image, item.image_path)
            sample["alpha"] = torch.from_numpy(alpha[None])
        return sample
