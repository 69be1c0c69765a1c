"""Lean inference variant of the detail-capture decoder: block-sparse and exact.

A decoder call computes only the output region it returns (the kept centre of a patch-decoder
tile). With ``clamp_known`` (the output's known regions are forced to the trimap's 0 and 1
anyway) it computes only the output blocks of that region that hold an unknown pixel, and of every
stage only the boxes those blocks depend on (:func:`~modeling.lean.blocks.plan_decoder`); a call
whose region holds no unknown pixel computes nothing, so a whole patch-decoder tile is skipped.
Without ``clamp_known`` every block is wanted.

Each map is kept channels-last for the hull of its boxes; a box is one conv without padding on a
zero-padded crop of the maps below (for a fusion stage: the detail map and the x2 upsampled
coarser map, concatenated). The last fusion stage runs per output box, under the head. BatchNorm
is folded into the preceding conv once per set of weights.

Every pixel gets the value the whole-map computation gives it, whatever the boxes: the crops hold
the same values, the upsampling samples the same positions (a crop starts on a whole coarse
pixel) with PyTorch's channels-last kernel, oneDNN's convolution computes an output pixel the
same way whatever the size of its input (PyTorch hands inputs below 20480 elements to another
algorithm, so :func:`valid_conv` calls oneDNN directly for float32 on the CPU), and
:func:`lane_sigmoid` gives every pixel the vectorised sigmoid. So the clamped output is
bit-identical to clamping the unclamped one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from modeling.decoder.detail_capture import (
    TRIMAP_CHANNEL,
    DetailCapture,
    Region,
    force_known,
    unknown_pixels,
)

from .block_decode import decode_plan
from .blocks import DecoderSpec, map_sizes, plan_decoder
from .cone import crop, origin
from .mode import lean_active, lean_variant

__all__ = ["LeanDetailCapture", "fold_batchnorm", "lane_sigmoid", "valid_conv"]

# The CPU sigmoid runs vectorised over whole groups of SIGMOID_LANES elements and element by
# element on the rest, and the two differ in the last bit; pieces of SIGMOID_PIECE elements (a
# multiple of it, below PyTorch's parallel grain of 32768) are never split among threads.
SIGMOID_LANES = 64
SIGMOID_PIECE = 2**14


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv, with the BatchNorm's running statistics."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # [C_out]
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), bias


def valid_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int]) -> Tensor:
    """``F.conv2d`` without padding; oneDNN's convolution itself for float32 on the CPU (outside
    autocast), so that an output pixel does not depend on the size of the input."""
    if (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not torch.is_autocast_enabled("cpu")
    ):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, (0, 0), stride, (1, 1), 1)
    return F.conv2d(x, weight, bias, stride)


def lane_sigmoid(x: Tensor) -> Tensor:
    """``torch.sigmoid(x)`` with every element through the CPU's vectorised path (see
    ``SIGMOID_LANES``), so that an element's value does not depend on where it lies in ``x``."""
    if x.device.type != "cpu":
        return torch.sigmoid(x)
    flat = x.reshape(-1)
    n = flat.numel()
    out = flat.new_zeros(n + (-n) % SIGMOID_LANES)
    out[:n] = flat
    for piece in out.split(SIGMOID_PIECE):
        piece.sigmoid_()
    return out[:n].view(x.shape)


def _assemble(parts: Sequence[Tensor], pads: tuple[int, int, int, int]) -> Tensor:
    """``parts`` concatenated along channels, channels-last, with ``pads`` (left, right, top,
    bottom) zeros around them: one copy of each part."""
    left, right, top, bottom = pads
    B, _, h, w = parts[0].shape
    channels = sum(part.shape[1] for part in parts)
    shape = (B, channels, top + h + bottom, left + w + right)
    out = torch.empty(
        shape, dtype=parts[0].dtype, device=parts[0].device, memory_format=torch.channels_last
    )
    if any(pads):
        out.zero_()
    start = 0
    for part in parts:
        out[:, start : start + part.shape[1], top : top + h, left : left + w] = part
        start += part.shape[1]
    return out


class _TorchStages:
    """The per-box computations of :func:`~modeling.lean.block_decode.decode_plan` in PyTorch,
    with the decoder's folded convs (see the module docstring for why they are exact)."""

    def __init__(self, decoder: LeanDetailCapture) -> None:
        self.decoder = decoder
        self.folded = decoder._folded_convs()

    def _conv(self, block: nn.Module, x: Tensor, stride: tuple[int, int] = (1, 1)) -> Tensor:
        weight, bias = self.folded[block]  # BatchNorm folded in
        return valid_conv(x, weight, bias, stride).relu_()

    def stride_down(self, k: int, x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
        block = self.decoder.convstream.convs[k - 1]
        return self._conv(block, _assemble([x], pads), block.conv.stride)

    def fuse(
        self,
        i: int,
        detail: Tensor,
        coarse: Tensor,
        offset: tuple[int, int],
        pads: tuple[int, int, int, int],
    ) -> Tensor:
        # Channels-last: PyTorch's kernel for that layout gives a pixel the same value whatever
        # the crop (its kernel for other layouts does not).
        coarse = coarse.contiguous(memory_format=torch.channels_last)
        up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
        (h, w), (dy, dx) = detail.shape[-2:], offset
        up = up[..., dy : dy + h, dx : dx + w]
        return self._conv(self.decoder.fusion_blks[i].conv, _assemble([detail, up], pads))

    def head(self, x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
        out_conv = self.decoder.matting_head.matting_convs[-1]
        hidden = self._conv(self.decoder.matting_head, _assemble([x], pads))
        return lane_sigmoid(valid_conv(hidden, out_conv.weight, out_conv.bias, out_conv.stride))

    @staticmethod
    def empty(like: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
        return torch.empty(
            shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last
        )

    @staticmethod
    def label(name: str) -> record_function:
        return record_function(name)  # a profiler range (no cost without a profiler)


@lean_variant(DetailCapture)
class LeanDetailCapture(DetailCapture):
    """See the module docstring. The folded weights are recomputed only when a weight, a
    running statistic, a device or a dtype changed since the last fold."""

    def train(self, mode: bool = True) -> LeanDetailCapture:
        """Fold BatchNorm when put into eval mode."""
        super().train(mode)
        if not mode:
            self._folded_convs()
        return self

    def forward(
        self,
        features: Tensor,
        images: Tensor,
        region: Region | None = None,
        clamp_known: bool = False,
    ) -> dict[str, Tensor]:
        if not lean_active(self):
            return super().forward(features, images, region, clamp_known)
        region = region if region is not None else ((0, images.shape[-2]), (0, images.shape[-1]))
        trimap = crop(images[:, TRIMAP_CHANNEL : TRIMAP_CHANNEL + 1], region)
        if clamp_known:
            wanted = unknown_pixels(trimap).any(dim=0)[0]  # [h, w], over the batch
            phas = trimap.to(torch.float32, copy=True)  # the trimap where nothing is computed
        else:
            wanted = torch.ones(trimap.shape[-2:], dtype=torch.bool)
            phas = features.new_empty(trimap.shape, dtype=torch.float32)
        sizes = map_sizes(images.shape[-2:], features.shape[-2:], len(self.fusion_blks))
        spec = DecoderSpec.of(self)
        plan = plan_decoder(spec, sizes, wanted.cpu().numpy(), origin(region))
        for box, alpha in decode_plan(plan, spec, sizes, features, images, _TorchStages(self)):
            crop(phas, box, origin(region)).copy_(alpha)
        return {"phas": force_known(phas, trimap) if clamp_known else phas}

    def _folded_convs(self) -> dict[nn.Module, tuple[Tensor, Tensor]]:
        """``{conv block or head: (weight, bias)}`` with BatchNorm folded in, cached per weights."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        # Inference tensors (made under torch.inference_mode) cannot change: no version counter.
        key = tuple((t.data_ptr(), t.dtype, t.is_inference() or t._version) for t in tensors)
        if getattr(self, "_fold_key", None) != key:
            pairs = [(block, (block.conv, block.bn)) for block in self.convstream.convs]
            pairs += [(f.conv, (f.conv.conv, f.conv.bn)) for f in self.fusion_blks]
            head = self.matting_head.matting_convs
            pairs.append((self.matting_head, (head[0], head[1])))
            with torch.no_grad():
                self._folds = {module: fold_batchnorm(*convs) for module, convs in pairs}
            self._fold_key = key
        return self._folds
