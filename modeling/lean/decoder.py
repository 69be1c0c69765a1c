"""Lean inference variant of the detail-capture decoder: only the wanted region, in strips.

A decoder call computes only the output region it returns (the kept centre of a patch-decoder
tile) and, for every stage, only the part of its map that region depends on (:class:`Cone`),
which gives exactly the whole-map values there. The conv stream and the coarse fusion stages run
once on the cone of the region; the last ``DECODER_STRIP_STAGES`` fusion stages and the head (the
largest maps) run on the cones of strips of ``DECODER_STRIP_ROWS`` output rows. Maps are
channels-last, and BatchNorm is folded into the preceding conv once per set of weights.

With ``clamp_known`` (the output's known regions are forced to the trimap's 0 and 1 anyway) a
call whose region holds no unknown pixel computes nothing (a whole patch-decoder tile is then
skipped), and only the strips that hold unknown pixels run the last stages and the head. The
strips that are computed are computed exactly as without ``clamp_known`` (same crops, so the same
floating-point results): the clamped output is bit-identical to clamping afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from modeling.decoder.detail_capture import (
    TRIMAP_CHANNEL,
    BasicConv3x3,
    DetailCapture,
    Region,
    force_known,
    unknown_pixels,
)

from .cone import Cone, crop, down_need, origin, shift, spans
from .constants import DECODER_STRIP_ROWS, DECODER_STRIP_STAGES
from .mode import lean_active, lean_variant

__all__ = ["LeanDetailCapture", "fold_batchnorm"]


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv, with the BatchNorm's running statistics."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # [C_out]
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), bias


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
        H, W = images.shape[-2:]
        region = region if region is not None else ((0, H), (0, W))
        trimap = crop(images[:, TRIMAP_CHANNEL : TRIMAP_CHANNEL + 1], region)
        unknown = unknown_pixels(trimap) if clamp_known else None
        strips = _strips(region, unknown)
        if clamp_known:
            phas = trimap.to(torch.float32, copy=True)  # the trimap where no strip is computed
        else:
            phas = features.new_empty(trimap.shape, dtype=torch.float32)
        if strips:
            for strip, strip_phas in self._decode_strips(features, images, region, strips):
                crop(phas, strip, origin(region)).copy_(strip_phas)
        return {"phas": force_known(phas, trimap) if clamp_known else phas}

    def _decode_strips(
        self, features: Tensor, images: Tensor, region: Region, strips: Sequence[Region]
    ) -> Iterator[tuple[Region, Tensor]]:
        """Alpha of the given row strips of ``region``: the conv stream and the coarse fusion
        stages once on the cone of the region, the last stages and the head per strip."""
        H, W = images.shape[-2:]
        num_fusions = len(self.fusion_blks)
        # Map sizes per scale: scale k is 1 / 2**k of the input (k = num_fusions: the features).
        sizes = [(-(-H // 2**k), -(-W // 2**k)) for k in range(num_fusions)]
        sizes.append(tuple(features.shape[-2:]))
        cone = Cone.of(region, sizes, num_fusions)
        folded = self._folded_convs()
        details = self._details(images, cone, sizes, folded)
        first_strip_stage = max(0, num_fusions - DECODER_STRIP_STAGES)
        x = crop(features, cone.inputs[0]).contiguous(memory_format=torch.channels_last)
        x = self._fuse(x, details, cone, range(first_strip_stage), folded)
        for strip in strips:
            sub = Cone.of(strip, sizes, num_fusions)
            y = crop(x, sub.inputs[first_strip_stage], origin(cone.inputs[first_strip_stage]))
            y = self._fuse(y, details, sub, range(first_strip_stage, num_fusions), folded)
            logits = crop(self._head(y, folded), strip, origin(sub.inputs[num_fusions]))
            yield strip, torch.sigmoid(logits)

    def _details(
        self, images: Tensor, cone: Cone, sizes: Sequence[tuple[int, int]], folded: dict
    ) -> list[tuple[Tensor, tuple[int, int]]]:
        """Detail maps D0, D1, ... cropped to ``cone.detail``, each with its crop origin."""
        d0 = crop(images, cone.detail[0]).contiguous(memory_format=torch.channels_last)
        details = [(d0, origin(cone.detail[0]))]
        for k, block in enumerate(self.convstream.convs, start=1):
            with record_function(f"decoder.convstream{k}"):  # a profiler label (no cost without)
                previous, previous_origin = details[-1]
                down = spans(cone.detail[k], down_need, sizes[k - 1])
                start = (down[0][0] // 2, down[1][0] // 2)  # output origin of the stride-2 conv
                out = self._conv(block, crop(previous, down, previous_origin), folded)
                details.append((crop(out, cone.detail[k], start), origin(cone.detail[k])))
        return details

    def _fuse(
        self,
        x: Tensor,
        details: Sequence[tuple[Tensor, tuple[int, int]]],
        cone: Cone,
        stages: range,
        folded: dict,
    ) -> Tensor:
        """Run fusion ``stages`` on the regions of ``cone``.

        Args:
            x: the first stage's coarse input, cropped to ``cone.inputs[stages.start]``.
            details: detail maps with their crop origins (:meth:`_details`).
            cone: the regions to compute.
            stages: consecutive fusion stage indexes.
            folded: :meth:`_folded_convs`.

        Returns:
            the last stage's output, cropped to ``cone.inputs[stages.stop]``.
        """
        num_fusions = len(self.fusion_blks)
        for i in stages:
            with record_function(f"decoder.fusion{i}"):
                detail, detail_origin = details[num_fusions - 1 - i]
                in_origin = origin(cone.inputs[i])
                up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
                up = crop(up, shift(cone.fusion_in[i], (2 * in_origin[0], 2 * in_origin[1])))
                fused = torch.cat([crop(detail, cone.fusion_in[i], detail_origin), up], dim=1)
                del up  # not alive during the conv: the largest map of a decoder tile
                out = self._conv(self.fusion_blks[i].conv, fused, folded)
                x = crop(out, cone.inputs[i + 1], origin(cone.fusion_in[i]))
        return x

    @staticmethod
    def _conv(block: BasicConv3x3, x: Tensor, folded: dict) -> Tensor:
        weight, bias = folded[block]
        return F.conv2d(x, weight, bias, block.conv.stride, block.conv.padding).relu_()

    def _head(self, x: Tensor, folded: dict) -> Tensor:
        conv, _, _, out_conv = self.matting_head.matting_convs
        weight, bias = folded[self.matting_head]
        with record_function("decoder.head"):
            return out_conv(F.conv2d(x, weight, bias, conv.stride, conv.padding).relu_())

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


def _strips(region: Region, unknown: Tensor | None) -> list[Region]:
    """``region`` cut into strips of ``DECODER_STRIP_ROWS`` rows; given the region's unknown mask
    ``[B, 1, h, w]``, only the strips that hold unknown pixels (an empty list: none does)."""
    (y0, y1), cols = region
    strips = []
    for r0 in range(y0, y1, DECODER_STRIP_ROWS):
        r1 = min(y1, r0 + DECODER_STRIP_ROWS)
        if unknown is None or bool(unknown[..., r0 - y0 : r1 - y0, :].any()):
            strips.append(((r0, r1), cols))
    return strips
