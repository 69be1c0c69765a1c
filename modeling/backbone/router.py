"""Local-global token router of MEMatte.

References: DynamicViT (Rao et al. 2021) PredictorLG; MEMatte (Lin et al. 2025).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Router"]

# Index of the "route to global attention" class in the router's 2-way output.
GLOBAL_ROUTE = 0
NUM_ROUTES = 2
# Tokens per chunk of the inference router (eval mode without autograd); the scores do not
# depend on it beyond float rounding of the image mean.
CHUNK_TOKENS = 1024


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
        if not (self.training or torch.is_grad_enabled()):
            return self._forward_chunked(x)
        x = self.in_conv(x)
        B, N, C = x.shape
        local_x = x[..., : C // 2]
        global_x = x[..., C // 2 :].mean(dim=1, keepdim=True)  # [B, 1, C/2] image context
        x = torch.cat([local_x, global_x.expand(B, N, C // 2)], dim=-1)
        return self.out_conv(x)

    def _forward_chunked(self, x: Tensor) -> Tensor:
        """Inference: the same scores over chunks of ``CHUNK_TOKENS`` tokens, in two passes
        (local halves and the sum of the global halves; then the MLP), so that no projected
        ``[B, N, C]`` map exists for the whole image."""
        B, N, _ = x.shape
        chunks = range(0, N, CHUNK_TOKENS)
        local_x, global_sum = None, None
        for n0 in chunks:
            h = self.in_conv(x[:, n0 : n0 + CHUNK_TOKENS])  # [B, n, C]
            half = h.shape[-1] // 2
            if local_x is None:
                local_x = h.new_empty(B, N, half)
                global_sum = h.new_zeros(B, 1, half)
            local_x[:, n0 : n0 + CHUNK_TOKENS] = h[..., :half]
            global_sum += h[..., half:].sum(dim=1, keepdim=True)
        global_x = global_sum / N  # [B, 1, C/2] image context
        out = None
        for n0 in chunks:
            local = local_x[:, n0 : n0 + CHUNK_TOKENS]
            scores = self.out_conv(torch.cat([local, global_x.expand_as(local)], dim=-1))
            if out is None:
                out = scores.new_empty(B, N, scores.shape[-1])
            out[:, n0 : n0 + CHUNK_TOKENS] = scores
        return out
