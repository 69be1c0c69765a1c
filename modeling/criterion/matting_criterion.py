"""Matting losses of ViTMatte/MEMatte: unknown/known L1, Laplacian pyramid, gradient penalty.

References: ViTMatte (Yao et al. 2024); the Laplacian loss of RVM (Lin et al. 2021).

Every loss is a pure function ``(pred, target, unknown_mask) -> Tensor`` on ``[B, 1, H, W]``
tensors. The official code scales sums by ``B * 262144 / mask.sum()``; 262144 = 512 x 512, the
training crop, so on 512 x 512 crops that is exactly the masked mean written here. A region with
no pixel contributes 0 (the official code does the same for the known region).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MattingCriterion",
    "gradient_penalty_loss",
    "known_l1_loss",
    "laplacian_loss",
    "unknown_l1_loss",
]

# Weight of the plain gradient magnitude term of the gradient penalty (official value).
GRADIENT_MAGNITUDE_WEIGHT = 0.01
LAPLACIAN_LEVELS = 5
# 5x5 binomial kernel of the Laplacian pyramid, normalised by its sum (256).
_BINOMIAL_5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over pixels where ``mask`` is 1; 0 for an empty mask."""
    count = mask.sum()
    total = (values * mask).sum()
    return torch.where(count > 0, total / count.clamp(min=1), total * 0)


def unknown_l1_loss(pred: Tensor, target: Tensor, unknown_mask: Tensor) -> Tensor:
    """Mean absolute alpha error over the unknown region."""
    return masked_mean((pred - target).abs(), unknown_mask)


def known_l1_loss(pred: Tensor, target: Tensor, unknown_mask: Tensor) -> Tensor:
    """Mean absolute alpha error over the known (foreground and background) region."""
    return masked_mean((pred - target).abs(), (unknown_mask == 0).to(pred.dtype))


def _sobel(x: Tensor) -> tuple[Tensor, Tensor]:
    kernel_x = SOBEL_X.to(x)[None, None]
    kernel_y = SOBEL_X.t().to(x)[None, None]
    return F.conv2d(x, kernel_x, padding=1), F.conv2d(x, kernel_y, padding=1)


def gradient_penalty_loss(pred: Tensor, target: Tensor, unknown_mask: Tensor) -> Tensor:
    """Sobel-gradient L1 to the target plus a small gradient-magnitude penalty, unknown region."""
    pred_x, pred_y = _sobel(pred)
    target_x, target_y = _sobel(target)
    match = masked_mean((pred_x - target_x).abs(), unknown_mask) + masked_mean(
        (pred_y - target_y).abs(), unknown_mask
    )
    magnitude = masked_mean(pred_x.abs(), unknown_mask) + masked_mean(pred_y.abs(), unknown_mask)
    return match + GRADIENT_MAGNITUDE_WEIGHT * magnitude


def _gauss_blur(x: Tensor) -> Tensor:
    kernel = torch.outer(_BINOMIAL_5, _BINOMIAL_5).to(x)
    kernel = (kernel / kernel.sum())[None, None]
    B, C, H, W = x.shape
    x = F.pad(x.reshape(B * C, 1, H, W), (2, 2, 2, 2), mode="reflect")
    return F.conv2d(x, kernel).reshape(B, C, H, W)


def _laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    pyramid = []
    for _ in range(levels):
        H, W = x.shape[-2:]
        x = x[..., : H - H % 2, : W - W % 2]  # even size so down/up-sampling round-trips
        down = _gauss_blur(x)[..., ::2, ::2]
        up = torch.zeros_like(x)
        up[..., ::2, ::2] = down * 4  # zero-insertion upsampling, energy preserved
        pyramid.append(x - _gauss_blur(up))
        x = down
    return pyramid


def laplacian_loss(
    pred: Tensor, target: Tensor, unknown_mask: Tensor | None = None, levels: int = LAPLACIAN_LEVELS
) -> Tensor:
    """L1 between Laplacian pyramids, level ``l`` weighted ``2**l``, averaged over levels.

    The loss covers the whole image; ``unknown_mask`` is accepted for the shared signature.
    """
    pred_pyr = _laplacian_pyramid(pred, levels)
    target_pyr = _laplacian_pyramid(target, levels)
    total = sum(2**i * F.l1_loss(p, t) for i, (p, t) in enumerate(zip(pred_pyr, target_pyr)))
    return total / levels


# Official loss names (config strings) -> (loss_* key, function).
LOSSES: dict[str, tuple[str, Callable[[Tensor, Tensor, Tensor], Tensor]]] = {
    "unknown_l1_loss": ("loss_unknown_l1", unknown_l1_loss),
    "known_l1_loss": ("loss_known_l1", known_l1_loss),
    "loss_pha_laplacian": ("loss_pha_laplacian", laplacian_loss),
    "loss_gradient_penalty": ("loss_gradient_penalty", gradient_penalty_loss),
}


class MattingCriterion(nn.Module):
    """Computes the configured matting losses as a ``{"loss_*": Tensor}`` dict."""

    def __init__(self, losses: Sequence[str] = tuple(LOSSES)) -> None:
        """
        Args:
            losses: official loss names, any of ``unknown_l1_loss``, ``known_l1_loss``,
                ``loss_pha_laplacian``, ``loss_gradient_penalty``.
        """
        super().__init__()
        unknown = sorted(set(losses) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown losses {unknown}; choose from {sorted(LOSSES)}")
        self.losses = list(losses)

    def forward(self, pred: Tensor, target: Tensor, unknown_mask: Tensor) -> dict[str, Tensor]:
        """
        Args:
            pred: predicted alpha ``[B, 1, H, W]``.
            target: ground-truth alpha ``[B, 1, H, W]``.
            unknown_mask: ``[B, 1, H, W]``, 1 where the trimap is unknown.
        """
        return {
            LOSSES[name][0]: LOSSES[name][1](pred, target, unknown_mask) for name in self.losses
        }
