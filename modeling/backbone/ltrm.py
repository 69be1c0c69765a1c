"""Lightweight Token Refinement Module (LTRM) and Efficient Channel Attention (ECA).

References: MEMatte (Lin et al. 2025); ECA-Net (Wang et al. 2020).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ECA", "LTRM"]


class ECA(nn.Module):
    """Efficient channel attention on ``[B, C, H, W]`` maps: ``x * sigmoid(conv1d(avgpool(x)))``."""

    def __init__(self, channels: int, b: int = 1, gamma: int = 2) -> None:
        """
        Args:
            channels: C; the 1-d kernel size is derived from it (3 for 96, 5 for 384 and 768).
            b, gamma: the ECA-Net kernel-size rule ``k = |log2(C) / gamma + b / gamma|`` (odd).
        """
        super().__init__()
        k = int(abs(math.log2(channels) / gamma + b / gamma))
        kernel_size = k if k % 2 else k + 1
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def gate(self, x: Tensor) -> Tensor:
        """Channel gate ``sigmoid(conv1d(avgpool(x)))`` of ``[B, C, H, W]``: ``[B, C, 1, 1]``."""
        y = self.avg_pool(x)  # [B, C, 1, 1]
        # [B, C, 1] -> [B, 1, C] for the 1-d conv across channels -> back to [B, C, 1, 1]
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return self.sigmoid(y)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        return x * self.gate(x)


class LTRM(nn.Module):
    """fc (x2 expansion), GELU, depthwise 5x5 conv, GELU, fc, then ``y + ECA(y)``.

    It refines the tokens that the router does not send to global attention and runs on the
    un-normalised block input.
    """

    def __init__(self, dim: int, expand_ratio: int = 2, kernel_size: int = 5) -> None:
        """
        Args:
            dim: token channels C.
            expand_ratio: hidden expansion of the first fc.
            kernel_size: depthwise conv kernel.
        """
        super().__init__()
        hidden = dim * expand_ratio
        self.fc1 = nn.Linear(dim, hidden)
        self.act1 = nn.GELU()
        self.dwconv = nn.Conv2d(
            hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden
        )
        # The conv runs on a permuted view of [B, H, W, C] tokens, i.e. channels-last, so its
        # weight gradient comes back channels-last: keep the weight in that layout (as
        # ResBottleneckBlock does; the same bytes for a [C, 1, k, k] depthwise kernel, only the
        # stride of the size-1 dim differs), so DDP's gradient buckets match it (otherwise "Grad
        # strides do not match bucket view strides" on every rank).
        self.dwconv.to(memory_format=torch.channels_last)
        self.act2 = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.eca = ECA(dim)

    def forward_local(self, x: Tensor) -> Tensor:
        """fc1, GELU, depthwise conv, GELU, fc2: ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        x = self.act1(self.fc1(x))
        # channels-last -> channels-first for the depthwise conv, and back
        x = self.act2(self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return self.fc2(x)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        y = self.forward_local(x)
        # channels-last -> channels-first for the channel attention, and back
        return y + self.eca(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
