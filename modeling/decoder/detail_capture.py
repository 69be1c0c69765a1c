"""ViTMatte detail-capture decoder: a conv stream of image details fused with ViT features.

References: ViTMatte (Yao et al. 2024).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "TRIMAP_CHANNEL",
    "BasicConv3x3",
    "ConvStream",
    "DetailCapture",
    "FusionBlock",
    "MattingHead",
    "Region",
    "force_known",
    "unknown_pixels",
]

# Output pixels ``((y0, y1), (x0, x1))``, half-open, that a decoder call returns.
Region = tuple[tuple[int, int], tuple[int, int]]
# The input's trimap channel (after RGB): 0 background, 1 foreground, anything else unknown.
TRIMAP_CHANNEL = 3


def unknown_pixels(trimap: Tensor) -> Tensor:
    """Boolean map of the pixels whose alpha a trimap leaves open: neither 0 nor 1."""
    return (trimap != 0) & (trimap != 1)


def force_known(phas: Tensor, trimap: Tensor) -> Tensor:
    """Alpha with the trimap's known regions forced, as the official inference script does:
    0 where the trimap is 0, 1 where it is 1 (``[B, 1, H, W]`` each)."""
    return phas.masked_fill(trimap == 0, 0.0).masked_fill(trimap == 1, 1.0)


class BasicConv3x3(nn.Module):
    """Conv 3x3 (no bias), BatchNorm, ReLU."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 2, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, 3, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


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

    def forward(self, x: Tensor, detail: Tensor) -> Tensor:
        """
        Args:
            x: coarse features ``[B, C, h, w]``.
            detail: detail features ``[B, C_d, 2h, 2w]``.
        """
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([detail, up], dim=1))


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
        return self.matting_convs(x)


class DetailCapture(nn.Module):
    """Predicts alpha from ViT features ``[B, C, H/16, W/16]`` and the input ``[B, 4, H, W]``."""

    def __init__(
        self,
        in_chans: int = 384,
        img_chans: int = 4,
        convstream_out: Sequence[int] = (48, 96, 192),
        fusion_out: Sequence[int] = (256, 128, 64, 32),
        use_act_checkpoint: bool = False,
    ) -> None:
        """
        Args:
            in_chans: ViT feature channels.
            img_chans: input channels (RGB + trimap).
            convstream_out: channels of the 1/2, 1/4, 1/8 detail stages.
            fusion_out: channels of the four fusion stages (1/8 up to full resolution).
            use_act_checkpoint: with autograd on, recompute the activations of each stage (the
                conv stream, every fusion block, the head) in the backward pass instead of
                keeping them; BatchNorm statistics are updated once, in the forward pass.
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
        self.use_act_checkpoint = use_act_checkpoint

    def forward(
        self,
        features: Tensor,
        images: Tensor,
        region: Region | None = None,
        clamp_known: bool = False,
    ) -> dict[str, Tensor]:
        """
        Args:
            features: ``[B, C, H/16, W/16]``.
            images: ``[B, 4, H, W]``, the trimap in channel ``TRIMAP_CHANNEL``.
            region: the output pixels to return (e.g. the kept centre of a decoder tile); None
                for all of them.
            clamp_known: force the trimap's known regions (:func:`force_known`), as the
                official inference script does with the model's output.

        Returns:
            ``{"phas": [B, 1, H, W]}`` (or the region's ``[B, 1, y1 - y0, x1 - x0]``) in [0, 1].
        """
        details = self.run_stage(self.convstream, images)
        for i, fusion in enumerate(self.fusion_blks):
            features = self.run_stage(
                fusion, features, details[f"D{len(self.fusion_blks) - i - 1}"]
            )
        phas = torch.sigmoid(self.run_stage(self.matting_head, features))
        if clamp_known:
            phas = force_known(phas, images[:, TRIMAP_CHANNEL : TRIMAP_CHANNEL + 1])
        if region is not None:
            (y0, y1), (x0, x1) = region
            phas = phas[..., y0:y1, x0:x1]
        return {"phas": phas}

    def run_stage(self, stage: nn.Module, *args: Tensor) -> Any:
        """``stage(*args)``, activation-checkpointed when ``use_act_checkpoint`` in training."""
        if self.use_act_checkpoint and self.training:
            contexts = functools.partial(_recompute_contexts, stage)
            return checkpoint(stage, *args, use_reentrant=False, context_fn=contexts)
        return stage(*args)


def _recompute_contexts(stage: nn.Module) -> tuple[contextlib.AbstractContextManager, ...]:
    """Forward and recomputation contexts of a checkpointed decoder stage: the recomputation uses
    the batch statistics again but must not update the BatchNorm running statistics twice."""
    return contextlib.nullcontext(), _frozen_running_stats(stage)


@contextlib.contextmanager
def _frozen_running_stats(stage: nn.Module) -> Iterator[None]:
    """BatchNorm of ``stage`` with momentum 0 (running statistics kept exactly) and its batch
    counter restored: the recomputation saves the same tensors as the forward pass did."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
            norm.num_batches_tracked.sub_(1)
