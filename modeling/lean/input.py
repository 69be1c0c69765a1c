"""The network input of the lean path, built crop by crop on demand."""

from __future__ import annotations

import torch
from torch import Tensor

from utils.device import to_unit_float

__all__ = ["NormalizedInput"]


class NormalizedInput:
    """The padded network input ``[B, 4, Hp, Wp]`` (normalised RGB and the trimap) as crops.

    The reference :meth:`~modeling.meta_arch.mematte.MEMatte.preprocess` builds this tensor whole
    (64 MiB at 2048x2048, 450 MiB at 4872x6017); the lean path reads it crop by crop instead: the
    patch embedding in row strips, each decoder tile its own crop. Crops hold exactly the values
    of the whole tensor, zeros (the padding) beyond the image.

    Args:
        image: RGB ``[B, 3, H, W]``, float in 0..1 or uint8 (converted crop by crop, so that a
            6K uint8 image never exists as floats).
        trimap: ``[B, 1, H, W]``, float in 0..1 or uint8.
        pixel_mean, pixel_std: ``[3, 1, 1]`` normalisation.
        padded_hw: ``(Hp, Wp)``, at least ``(H, W)``.
    """

    def __init__(
        self,
        image: Tensor,
        trimap: Tensor,
        pixel_mean: Tensor,
        pixel_std: Tensor,
        padded_hw: tuple[int, int],
    ) -> None:
        self.image, self.trimap = image, trimap
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        self.hw = tuple(image.shape[-2:])
        channels = image.shape[1] + trimap.shape[1]
        self.shape = torch.Size((image.shape[0], channels, *padded_hw))

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        """``input[..., y0:y1, x0:x1]``, zeros wherever it lies beyond the image ``(H, W)``."""
        H, W = self.hw
        rgb_chans = self.image.shape[1]
        dtype = self.image.dtype if self.image.is_floating_point() else torch.float32
        out = self.image.new_zeros(*self.shape[:2], y1 - y0, x1 - x0, dtype=dtype)
        h, w = min(y1, H) - y0, min(x1, W) - x0
        if h > 0 and w > 0:
            image = to_unit_float(self.image[..., y0 : y0 + h, x0 : x0 + w])
            rgb = out[:, :rgb_chans, :h, :w]
            torch.sub(image, self.pixel_mean, out=rgb).div_(self.pixel_std)
            out[:, rgb_chans:, :h, :w] = to_unit_float(self.trimap[..., y0 : y0 + h, x0 : x0 + w])
        return out
