"""Local-global token router of MEMatte.

References: DynamicViT (Rao et al. 2021) PredictorLG; MEMatte (Lin et al. 2025).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GLOBAL_ROUTE", "NUM_ROUTES", "Router"]

# Index of the "route to global attention" class in the router's 2-way output.
GLOBAL_ROUTE = 0
NUM_ROUTES = 2


class Router(nn.Module):
    """Scores every token for global attention (index 0) or the LTRM (index 1).

    Half of the projected channels stay per token (local), the other half is averaged over all
    tokens of the image (global context); an MLP maps the concatenation to 2 log-probabilities.
    The attribute names ``in_conv``/``out_conv`` are frozen by the official checkpoints although
    they hold Linear layers, not convolutions.
    """

    def __init__(self, embed_dim: int = 384) -> None:
        """
        Args:
            embed_dim: token channels C.
        """
        super().__init__()
        # Default LayerNorm eps (1e-5) as the official router, unlike the blocks' 1e-6.
        self.in_conv = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU()
        )
        self.out_conv = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 2),
            nn.GELU(),
            nn.Linear(embed_dim // 2, embed_dim // 4),
            nn.GELU(),
            nn.Linear(embed_dim // 4, NUM_ROUTES),
            nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: tokens ``[B, N, C]``.

        Returns:
            log-probabilities ``[B, N, 2]`` (index 0 = route to global attention).
        """
        x = self.in_conv(x)
        B, N, C = x.shape
        local_x = x[..., : C // 2]
        global_x = x[..., C // 2 :].mean(dim=1, keepdim=True)  # [B, 1, C/2] image context
        x = torch.cat([local_x, global_x.expand(B, N, C // 2)], dim=-1)
        return self.out_conv(x)
