"""Lean inference variants of the backbone modules: same weights and results, bounded memory.

Each class overrides the forward of its reference class and falls back to it unless
:func:`~modeling.lean.mode.lean_active` holds. Token maps are computed in strips or chunks
(:func:`~modeling.lean.chunking.map_strips`) so that no wide intermediate (MLP hidden state, LTRM
activations, window q/k/v, rel-pos bias, router projections) exists for the whole image, and
residuals are added in place into fresh branch outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from modeling.backbone.attention import Attention, decomposed_rel_pos_terms
from modeling.backbone.ltrm import LTRM
from modeling.backbone.router import Router
from modeling.backbone.vit import Block, PatchEmbed
from modeling.meta_arch.mematte import CroppedInput

from .chunking import map_strips
from .constants import (
    EMBED_STRIP_PATCH_ROWS,
    MAX_BIAS_ELEMENTS,
    MLP_CHUNK_TOKENS,
    ROUTER_CHUNK_TOKENS,
    STRIP_TOKENS,
    WINDOW_CHUNK_TOKENS,
)
from .mode import lean_active, lean_variant

__all__ = ["LeanAttention", "LeanBlock", "LeanLTRM", "LeanPatchEmbed", "LeanRouter"]

# Receptive-field radius, in tokens, of the conv residual block (one 3x3 conv).
RESIDUAL_HALO = 1


def _add_into(branch: Tensor, x: Tensor) -> Tensor:
    """``x + branch``, added in place into ``branch`` (a fresh tensor) when the dtypes agree."""
    return branch.add_(x) if branch.dtype == x.dtype else x + branch


@lean_variant(Attention)
class LeanAttention(Attention):
    """Rel-pos attention over (batch, query-row) chunks: no bias above ``MAX_BIAS_ELEMENTS``."""

    def rel_pos_attention(self, q: Tensor, k: Tensor, v: Tensor, hw: tuple[int, int]) -> Tensor:
        if not lean_active(self):
            return super().rel_pos_attention(q, k, v, hw)
        B, nh, N, d = q.shape
        H, W = hw
        rel_h, rel_w = decomposed_rel_pos_terms(
            q.reshape(B * nh, N, d), self.rel_pos_h, self.rel_pos_w, hw, hw
        )
        # Contiguous terms make the broadcast sum below contiguous, so the bias needs no copy.
        rel_h = rel_h.contiguous().view(B, nh, H, W, H)
        rel_w = rel_w.contiguous().view(B, nh, H, W, W)
        per_query_row = nh * W * N  # bias elements of one query row of one image
        rows = max(1, min(H, MAX_BIAS_ELEMENTS // per_query_row))
        images = max(1, min(B, MAX_BIAS_ELEMENTS // (per_query_row * rows)))

        def attend_rows(b0: int, b1: int, r0: int, r1: int) -> Tensor:
            # bias [b, heads, rows, W, H, W] -> [b, heads, rows * W, N]
            bias = rel_h[b0:b1, :, r0:r1, :, :, None] + rel_w[b0:b1, :, r0:r1, :, None, :]
            bias = bias.view(b1 - b0, nh, (r1 - r0) * W, N)
            queries = q[b0:b1, :, r0 * W : r1 * W]
            out = F.scaled_dot_product_attention(queries, k[b0:b1], v[b0:b1], attn_mask=bias)
            return out.view(b1 - b0, nh, r1 - r0, W, d)  # query rows as their own dim

        def attend_images(b0: int, b1: int) -> Tensor:
            return map_strips(lambda r0, r1: attend_rows(b0, b1, r0, r1), H, rows, dim=2)

        return map_strips(attend_images, B, images, dim=0).view(B, nh, N, d)


@lean_variant(Block)
class LeanBlock(Block):
    """Window attention in strips of window rows, MLP over token chunks added in place, the
    conv residual block in row strips."""

    def forward(self, x: Tensor, policy: Tensor | None = None) -> Tensor:
        if not lean_active(self):
            return super().forward(x, policy)
        if self.use_efficient_block or self.window_size == 0:
            x = _add_into(self.attention_branch(x, policy), x)
        else:
            x = _add_into(self._window_attention(x), x)
        x = x.contiguous()
        tokens = x.view(-1, x.shape[-1])  # [B * N, C], in place below

        def mlp_residual(a: int, b: int) -> Tensor:
            chunk = tokens[a:b]
            return chunk.add_(self.mlp(self.norm2(chunk)))

        map_strips(mlp_residual, tokens.shape[0], MLP_CHUNK_TOKENS, dim=0, out=tokens)
        if self.use_residual_block:
            rows = max(1, STRIP_TOKENS // x.shape[2])
            x = map_strips(
                lambda a, b: self.residual(x[:, a:b].permute(0, 3, 1, 2)).permute(0, 2, 3, 1),
                x.shape[1],
                rows,
                dim=1,
                halo=RESIDUAL_HALO,
            )
        return x

    def _window_attention(self, x: Tensor) -> Tensor:
        """Window attention of ``[B, H, W, C]`` over strips of whole window rows."""
        ws = self.window_size
        windows_per_row = -(-x.shape[2] // ws)
        rows = ws * max(1, WINDOW_CHUNK_TOKENS // (ws * ws * windows_per_row))
        return map_strips(lambda a, b: self.attend(self.norm1(x[:, a:b])), x.shape[1], rows, dim=1)


@lean_variant(LTRM)
class LeanLTRM(LTRM):
    """The local part in row strips (halo of the depthwise conv), the ECA residual in place."""

    def forward(self, x: Tensor) -> Tensor:
        if not lean_active(self):
            return super().forward(x)
        rows = max(1, STRIP_TOKENS // x.shape[2])
        halo = self.dwconv.padding[0]
        y = map_strips(
            lambda a, b: self.forward_local(x[:, a:b]), x.shape[1], rows, dim=1, halo=halo
        )
        gate = self.eca.gate(y.permute(0, 3, 1, 2))  # [B, C, 1, 1]
        # y + y * gate, in place: [B, C, 1, 1] -> [B, 1, 1, C] to broadcast over channels-last y
        return y.addcmul_(y, gate.permute(0, 2, 3, 1))


@lean_variant(Router)
class LeanRouter(Router):
    """The same scores over token chunks in two passes (the local halves and the sum of the
    global halves, then the MLP), so that no projected ``[B, N, C]`` map exists whole."""

    def forward(self, x: Tensor) -> Tensor:
        if not lean_active(self):
            return super().forward(x)
        N = x.shape[1]
        global_sum = 0.0

        def local_half(a: int, b: int) -> Tensor:
            nonlocal global_sum
            h = self.in_conv(x[:, a:b])  # [B, n, C]
            half = h.shape[-1] // 2
            global_sum = global_sum + h[..., half:].sum(dim=1, keepdim=True)
            return h[..., :half]

        local_x = map_strips(local_half, N, ROUTER_CHUNK_TOKENS, dim=1)
        global_x = global_sum / N  # [B, 1, C/2] image context

        def scores(a: int, b: int) -> Tensor:
            local = local_x[:, a:b]
            return self.out_conv(torch.cat([local, global_x.expand_as(local)], dim=-1))

        return map_strips(scores, N, ROUTER_CHUNK_TOKENS, dim=1)


@lean_variant(PatchEmbed)
class LeanPatchEmbed(PatchEmbed):
    """Embeds a :class:`~modeling.meta_arch.mematte.CroppedInput` in row strips of
    ``EMBED_STRIP_PATCH_ROWS`` patch rows: the projection's stride is its kernel, so the strips
    give the whole-input result without the input ever existing as a whole."""

    def forward(self, x: Tensor | CroppedInput) -> Tensor:
        if isinstance(x, Tensor):
            return super().forward(x)
        patch = self.proj.stride[0]
        Hp, Wp = x.shape[-2:]
        return map_strips(
            lambda a, b: super(LeanPatchEmbed, self).forward(x.crop(a * patch, b * patch, 0, Wp)),
            Hp // patch,
            EMBED_STRIP_PATCH_ROWS,
            dim=1,
        )
