"""ViTMatte detail-capture decoder: a conv stream of image details fused with ViT features.

References: ViTMatte (Yao et al. 2024).

At inference the decoder can compute only a region of its output (the kept centre of a patch in
patch-wise decoding): every stage is then evaluated only on the part of its map that the region
depends on (its dependency cone, clipped to the map), which gives exactly the values a whole-map
evaluation gives there. Inference also runs channels-last with BatchNorm folded into the convs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicConv3x3", "ConvStream", "DetailCapture", "FusionBlock", "MattingHead"]

# At inference the last fusion stages (1/2 and full resolution) and the matting head, whose maps
# are the largest of the decoder (up to 176 channels at 1/2, 68 at full resolution), run in row
# strips of this many output rows: a 512 px tile's maps then hold 128 rows instead of 512+.
STRIP_STAGES = 2
STRIP_ROWS = 128
# A half-open pixel span ``(lo, hi)`` along one axis, and a 2-d region ``(rows, cols)``.
Span = tuple[int, int]
Region = tuple[Span, Span]


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv, with the BatchNorm's running statistics."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # [C_out]
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), bias


def _conv_need(span: Span, size: int) -> Span:
    """Input span that a 3x3, stride-1, padding-1 conv needs for the output ``span``."""
    return max(span[0] - 1, 0), min(span[1] + 1, size)


def _down_need(span: Span, size: int) -> Span:
    """Input span that a 3x3, stride-2, padding-1 conv needs for the output ``span``.

    The span starts on an even pixel so that the conv's stride grid stays aligned; output pixel
    ``j`` reads input pixels ``2j - 1 .. 2j + 1``.
    """
    return max(2 * span[0] - 2, 0), min(2 * span[1], size)


def _up_need(span: Span, size: int) -> Span:
    """Input span that a x2 bilinear upsampling (``align_corners=False``) needs for ``span``.

    Output pixel ``x`` samples the input at ``max((x + 0.5) / 2 - 0.5, 0)``, i.e. pixels
    ``floor`` and ``floor + 1`` (clamped to the map) of that coordinate.
    """
    lo = max(math.floor((span[0] + 0.5) / 2 - 0.5), 0)
    hi = min(math.floor((span[1] - 1 + 0.5) / 2 - 0.5) + 2, size)
    return lo, hi


def _hull(a: Span | None, b: Span) -> Span:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]))


def _crop(x: Tensor, region: Region, origin: tuple[int, int] = (0, 0)) -> Tensor:
    """``x[..., rows, cols]`` for a region given in coordinates where ``x`` starts at ``origin``."""
    (y0, y1), (x0, x1) = region
    return x[..., y0 - origin[0] : y1 - origin[0], x0 - origin[1] : x1 - origin[1]]


def _map2(fn: Callable[[Span, int], Span], region: Region, size: tuple[int, int]) -> Region:
    """Apply a per-axis span rule to both axes of a region."""
    return fn(region[0], size[0]), fn(region[1], size[1])


class BasicConv3x3(nn.Module):
    """Conv 3x3 (no bias), BatchNorm, ReLU."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 2, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, 3, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.relu(self.bn(self.conv(x)))
        weight, bias = _fold_bn(self.conv, self.bn)
        return F.conv2d(x, weight, bias, self.conv.stride, self.conv.padding).relu_()


class ConvStream(nn.Module):
    """Stride-2 conv stages over the input; returns ``{"D0": input, "D1": 1/2, "D2": 1/4, ...}``."""

    def __init__(self, in_chans: int = 4, out_chans: Sequence[int] = (48, 96, 192)) -> None:
        super().__init__()
        self.conv_chans = [in_chans, *out_chans]
        self.convs = nn.ModuleList(
            BasicConv3x3(c_in, c_out) for c_in, c_out in zip(self.conv_chans, self.conv_chans[1:])
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {"D0": x}
        for i, conv in enumerate(self.convs, start=1):
            x = conv(x)
            out[f"D{i}"] = x
        return out


class FusionBlock(nn.Module):
    """Upsample features x2 (bilinear), concatenate detail features, BasicConv3x3 (stride 1)."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv = BasicConv3x3(in_chans, out_chans, stride=1, padding=1)

    def forward(self, x: Tensor, detail: Tensor, up_region: Region | None = None) -> Tensor:
        """
        Args:
            x: coarse features ``[B, C, h, w]``.
            detail: detail features ``[B, C_d, 2h, 2w]``, or their ``up_region`` crop.
            up_region: crop of the upsampled features (in their own coordinates) to fuse.
        """
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if up_region is not None:
            up = _crop(up, up_region)
        fused = torch.cat([detail, up], dim=1)
        del up  # not alive during the conv: the largest map of a decoder tile at inference
        return self.conv(fused)


class MattingHead(nn.Module):
    """Conv 3x3, BatchNorm, ReLU, conv 1x1 to one alpha logit channel."""

    def __init__(self, in_chans: int = 32, mid_chans: int = 16) -> None:
        super().__init__()
        self.matting_convs = nn.Sequential(
            nn.Conv2d(in_chans, mid_chans, 3, 1, 1),
            nn.BatchNorm2d(mid_chans),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_chans, 1, 1, 1, 0),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.matting_convs(x)
        conv, bn, _, out_conv = self.matting_convs
        weight, bias = _fold_bn(conv, bn)
        x = F.conv2d(x, weight, bias, conv.stride, conv.padding).relu_()
        return out_conv(x)


class DetailCapture(nn.Module):
    """Predicts alpha from ViT features ``[B, C, H/16, W/16]`` and the input ``[B, 4, H, W]``."""

    def __init__(
        self,
        in_chans: int = 384,
        img_chans: int = 4,
        convstream_out: Sequence[int] = (48, 96, 192),
        fusion_out: Sequence[int] = (256, 128, 64, 32),
    ) -> None:
        """
        Args:
            in_chans: ViT feature channels.
            img_chans: input channels (RGB + trimap).
            convstream_out: channels of the 1/2, 1/4, 1/8 detail stages.
            fusion_out: channels of the four fusion stages (1/8 up to full resolution).
        """
        super().__init__()
        if len(fusion_out) != len(convstream_out) + 1:
            raise ValueError("fusion_out needs one stage more than convstream_out")
        self.convstream = ConvStream(img_chans, convstream_out)
        detail_chans = self.convstream.conv_chans
        fusion_in = [in_chans, *fusion_out]
        # Fusion stage i takes the previous stage and the detail map one scale finer.
        self.fusion_blks = nn.ModuleList(
            FusionBlock(fusion_in[i] + detail_chans[-(i + 1)], fusion_in[i + 1])
            for i in range(len(fusion_out))
        )
        self.matting_head = MattingHead(fusion_out[-1])

    def forward(
        self, features: Tensor, images: Tensor, region: Region | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            features: ``[B, C, H/16, W/16]``.
            images: ``[B, 4, H, W]``.
            region: ``((y0, y1), (x0, x1))`` output pixels to compute (eval mode only); None for
                the whole map.

        Returns:
            ``{"phas": [B, 1, H, W]}`` (or the region's ``[B, 1, y1 - y0, x1 - x0]``) in [0, 1].
        """
        if self.training:
            if region is not None:
                raise ValueError("region decoding is an inference path")
            details = self.convstream(images)
            for i, fusion in enumerate(self.fusion_blks):
                features = fusion(features, details[f"D{len(self.fusion_blks) - i - 1}"])
            return {"phas": torch.sigmoid(self.matting_head(features))}
        return {"phas": self._forward_region(features, images, region)}

    def _forward_region(self, features: Tensor, images: Tensor, region: Region | None) -> Tensor:
        """Inference on the dependency cone of ``region`` only, channels-last.

        The conv stream and the coarse fusion stages run once on the cone of the whole region;
        the last ``STRIP_STAGES`` fusion stages and the head (the largest maps of the decoder)
        run on the cones of row strips of ``STRIP_ROWS`` output rows.
        """
        H, W = images.shape[-2:]
        num_fusions = len(self.fusion_blks)
        if region is None:
            region = ((0, H), (0, W))
        # Map sizes per scale: scale k is 1 / 2**k of the input (k = num_fusions: the features).
        sizes = [(-(-H // 2**k), -(-W // 2**k)) for k in range(num_fusions)]
        sizes.append(tuple(features.shape[-2:]))
        cone = _Cone.of(region, sizes, num_fusions)

        cl = torch.channels_last
        details = [_crop(images, cone.detail[0]).contiguous(memory_format=cl)]
        for k, conv in enumerate(self.convstream.convs, start=1):
            down = _map2(_down_need, cone.detail[k], sizes[k - 1])
            start = (down[0][0] // 2, down[1][0] // 2)  # output origin of the stride-2 conv
            out = conv(_crop(details[-1], down, _origin(cone.detail[k - 1])))
            details.append(_crop(out, cone.detail[k], start))
        detail_origins = [_origin(need) for need in cone.detail]

        first_strip_stage = max(0, num_fusions - STRIP_STAGES)
        x = _crop(features, cone.inputs[0]).contiguous(memory_format=cl)
        x = self._fuse(x, details, detail_origins, cone, range(first_strip_stage))
        x_origin = _origin(cone.inputs[first_strip_stage])
        (y0, y1), cols = region
        logits = []
        for r0 in range(y0, y1, STRIP_ROWS):
            strip = ((r0, min(y1, r0 + STRIP_ROWS)), cols)
            sub = _Cone.of(strip, sizes, num_fusions)
            y = _crop(x, sub.inputs[first_strip_stage], x_origin)
            y = self._fuse(y, details, detail_origins, sub, range(first_strip_stage, num_fusions))
            logits.append(_crop(self.matting_head(y), strip, _origin(sub.head_in)))
        return torch.sigmoid(torch.cat(logits, dim=-2))

    def _fuse(
        self,
        x: Tensor,
        details: Sequence[Tensor],
        detail_origins: Sequence[tuple[int, int]],
        cone: _Cone,
        stages: range,
    ) -> Tensor:
        """Run fusion ``stages`` on the regions of ``cone``.

        Args:
            x: the first stage's coarse input, cropped to ``cone.inputs[stages.start]``.
            details: detail maps D0, D1, ... (crops starting at ``detail_origins``).
            detail_origins: where each detail crop starts in its map.
            cone: the regions to compute.
            stages: consecutive fusion stage indexes.

        Returns:
            the last stage's output, cropped to ``cone.inputs[stages.stop]``.
        """
        num_fusions = len(self.fusion_blks)
        for i in stages:
            scale = num_fusions - 1 - i
            detail = _crop(details[scale], cone.fusion_in[i], detail_origins[scale])
            in_origin = _origin(cone.inputs[i])
            up_region = _shift(cone.fusion_in[i], (2 * in_origin[0], 2 * in_origin[1]))
            fused = self.fusion_blks[i](x, detail, up_region)
            x = _crop(fused, cone.inputs[i + 1], _origin(cone.fusion_in[i]))
        return x


class _Cone(NamedTuple):
    """Regions of every decoder map that one output region depends on (inference).

    Attributes:
        head_in: input region of the matting head (full resolution).
        fusion_in: per fusion stage, the region of its (detail, upsampled) conv input.
        inputs: per fusion stage, the region of its coarse input (``inputs[0]``: the ViT
            features); ``inputs[num_fusions]`` is the last stage's output region, ``head_in``.
        detail: per scale k, the region of the detail map Dk (D0 = the input image) that its
            fusion stage and the next (stride-2) conv-stream stage need.
    """

    head_in: Region
    fusion_in: list[Region]
    inputs: list[Region]
    detail: list[Region]

    @classmethod
    def of(cls, region: Region, sizes: Sequence[tuple[int, int]], num_fusions: int) -> _Cone:
        """Walk the graph backwards from ``region``; ``sizes[k]`` is the map size at scale k."""
        head_in = _map2(_conv_need, region, sizes[0])
        fusion_in: list[Region] = [None] * num_fusions
        inputs: list[Region] = [None] * num_fusions + [head_in]
        detail: list[Region] = [None] * num_fusions
        for i in reversed(range(num_fusions)):
            scale = num_fusions - 1 - i
            fusion_in[i] = _map2(_conv_need, inputs[i + 1], sizes[scale])
            detail[scale] = fusion_in[i]
            inputs[i] = _map2(_up_need, fusion_in[i], sizes[scale + 1])
        for k in reversed(range(1, num_fusions)):
            down = _map2(_down_need, detail[k], sizes[k - 1])
            prev = detail[k - 1]
            detail[k - 1] = (_hull(prev[0], down[0]), _hull(prev[1], down[1]))
        return cls(head_in, fusion_in, inputs, detail)


def _origin(region: Region) -> tuple[int, int]:
    return region[0][0], region[1][0]


def _shift(region: Region, origin: tuple[int, int]) -> Region:
    """``region`` in coordinates where ``origin`` is (0, 0)."""
    (y0, y1), (x0, x1) = region
    return (y0 - origin[0], y1 - origin[0]), (x0 - origin[1], x1 - origin[1])
