"""Lean inference variants of the backbone modules: same weights and results, bounded memory.

Each class overrides the forward of its reference class and falls back to it unless
:func:`~modeling.lean.mode.lean_active` holds. Token maps are computed in strips or chunks
(:func:`~modeling.lean.chunking.map_strips`) so that no wide intermediate (MLP hidden state, LTRM
activations, window q/k/v, rel-pos bias, router projections) exists for the whole image, and
residuals are added in place into fresh branch outputs. The linear layers followed by a GELU
(MLP, LTRM, router) and the MLP's second one run as one oneDNN matmul each with the bias and the
GELU fused in (:func:`~modeling.lean.fused.fused_linear`); window attention adds its windows to
the residual stream straight from window order, in one pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from modeling.backbone.attention import Attention, decomposed_rel_pos_terms, window_partition
from modeling.backbone.ltrm import LTRM
from modeling.backbone.router import Router
from modeling.backbone.vit import Block, PatchEmbed
from modeling.meta_arch.mematte import CroppedInput

from .chunking import map_strips
from .constants import (
    EMBED_STRIP_PATCH_ROWS,
    MAX_BIAS_ELEMENTS,
    MLP_CHUNK_TOKENS,
    QUERY_CHUNK_TOKENS,
    ROUTER_CHUNK_TOKENS,
    STRIP_TOKENS,
    WINDOW_CHUNK_TOKENS,
)
from .fused import fused_linear
from .mode import lean_active, lean_variant

__all__ = ["LeanAttention", "LeanBlock", "LeanLTRM", "LeanPatchEmbed", "LeanRouter"]

# Receptive-field radius, in tokens, of the conv residual block (one 3x3 conv).
RESIDUAL_HALO = 1


def _add_into(branch: Tensor, x: Tensor) -> Tensor:
    """``x + branch``, added in place into ``branch`` (a fresh tensor) when the dtypes agree."""
    return branch.add_(x) if branch.dtype == x.dtype else x + branch


@lean_variant(Attention)
class LeanAttention(Attention):
    """Global attention (no rel-pos) over query chunks, keys and values projected on their own;
    rel-pos attention over (batch, query-row) chunks: no bias above ``MAX_BIAS_ELEMENTS``."""

    def forward(self, x: Tensor, policy: Tensor | None = None) -> Tensor:
        if not lean_active(self) or policy is not None or self.use_rel_pos:
            return super().forward(x, policy)
        shape = x.shape
        tokens = x.reshape(shape[0], -1, shape[-1])  # [B, N, C]
        B, N, C = tokens.shape
        heads, weight, bias = self.num_heads, self.qkv.weight, self.qkv.bias
        # keys and values only: [B, N, 2C] -> [B, N, 2, heads, d] -> 2 x [B, heads, N, d] views
        kv = F.linear(tokens, weight[C:], None if bias is None else bias[C:])
        k, v = kv.view(B, N, 2, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)

        def attend(a: int, b: int) -> Tensor:
            q = F.linear(tokens[:, a:b], weight[:C], None if bias is None else bias[:C])
            q = q.view(B, b - a, heads, C // heads).transpose(1, 2)  # [B, heads, n, d]
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # [B, n, heads, d]
            return self.proj(out.reshape(B, b - a, C))

        return map_strips(attend, N, QUERY_CHUNK_TOKENS, dim=1).reshape(shape)

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
            x = self._window_residual(x.contiguous())
        x = x.contiguous()
        tokens = x.view(-1, x.shape[-1])  # [B * N, C], in place below

        def mlp_residual(a: int, b: int) -> Tensor:
            chunk = tokens[a:b]
            return chunk.add_(self._mlp(self.norm2(chunk)))

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

    def _mlp(self, x: Tensor) -> Tensor:
        """The MLP of ``[N, C]`` tokens: fc1 with its GELU, then fc2, each one fused matmul (the
        timm ``Mlp`` of the configs: no hidden norm; dropout is the identity in eval)."""
        mlp = self.mlp
        if not (isinstance(mlp.act, nn.GELU) and isinstance(mlp.norm, nn.Identity)):
            return mlp(x)
        # the profiler range that predictor.profiling opens around the module's call, which
        # this path does not make (no cost without a profiler)
        with record_function("backbone.mlp"):
            return fused_linear(fused_linear(x, mlp.fc1, mlp.act), mlp.fc2)

    def _window_residual(self, x: Tensor) -> Tensor:
        """``x`` plus its window attention, ``[B, H, W, C]`` (contiguous), over strips of whole
        window rows; each strip's windows are added to its rows straight from window order."""
        ws = self.window_size
        windows_per_row = -(-x.shape[2] // ws)
        rows = ws * max(1, WINDOW_CHUNK_TOKENS // (ws * ws * windows_per_row))
        out = torch.empty_like(x)
        for r0 in range(0, x.shape[1], rows):
            strip = x[:, r0 : r0 + rows]
            windows, _ = window_partition(self.norm1(strip), ws)
            _add_windows(out[:, r0 : r0 + rows], strip, self.attn(windows), ws)
        return out


def _add_windows(out: Tensor, x: Tensor, windows: Tensor, ws: int) -> Tensor:
    """``out = x + windows`` in one pass, ``x`` and ``out`` ``[B, r, W, C]`` in token order,
    ``windows`` ``[B * nh * nw, ws, ws, C]`` those of the zero-padded grid of ``x`` (as
    ``window_partition`` cuts them). Split into the part of whole windows and the partial last
    window row and column, each piece is one strided add."""
    B, r, W, C = x.shape
    nh, nw = -(-r // ws), -(-W // ws)
    # [B * nh * nw, ws, ws, C] -> [B, nh, nw, ws, ws, C] -> grid order [B, nh, ws, nw, ws, C]
    grid = windows.view(B, nh, nw, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    # (first window, windows, pixels per window) of the whole windows and the partial last one
    row_parts = [(0, r // ws, ws), (r // ws, 1, r % ws)]
    col_parts = [(0, W // ws, ws), (W // ws, 1, W % ws)]
    for w_r, n_r, p_r in row_parts:
        for w_c, n_c, p_c in col_parts:
            if not (n_r and p_r and n_c and p_c):
                continue
            rows, cols = (
                slice(w_r * ws, w_r * ws + n_r * p_r),
                slice(w_c * ws, w_c * ws + n_c * p_c),
            )
            shape = (B, n_r, p_r, n_c, p_c, C)  # token rows and columns split into windows
            piece = grid[:, w_r : w_r + n_r, :p_r, w_c : w_c + n_c, :p_c]
            torch.add(x[:, rows, cols].view(shape), piece, out=out[:, rows, cols].view(shape))
    return out


@lean_variant(LTRM)
class LeanLTRM(LTRM):
    """The local part in row strips (halo of the depthwise conv), the ECA residual in place."""

    def forward(self, x: Tensor) -> Tensor:
        if not lean_active(self):
            return super().forward(x)
        rows = max(1, STRIP_TOKENS // x.shape[2])
        halo = self.dwconv.padding[0]
        y = map_strips(lambda a, b: self._local(x[:, a:b]), x.shape[1], rows, dim=1, halo=halo)
        gate = self.eca.gate(y.permute(0, 3, 1, 2))  # [B, C, 1, 1]
        # y + y * gate, in place: [B, C, 1, 1] -> [B, 1, 1, C] to broadcast over channels-last y
        return y.addcmul_(y, gate.permute(0, 2, 3, 1))

    def _local(self, x: Tensor) -> Tensor:
        """:meth:`forward_local` of ``[B, h, w, C]`` with fc1 and its GELU as one fused matmul."""
        if not isinstance(self.act1, nn.GELU):
            return self.forward_local(x)
        B, h, w, C = x.shape
        hidden = fused_linear(x.reshape(-1, C), self.fc1, self.act1).view(B, h, w, -1)
        # channels-last -> channels-first for the depthwise conv, and back
        hidden = self.act2(self.dwconv(hidden.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return fused_linear(hidden.reshape(B * h * w, -1), self.fc2).view(B, h, w, C)


@lean_variant(Router)
class LeanRouter(Router):
    """The same scores over token chunks in two passes (the local halves and the sum of the
    global halves, then the MLP), so that no projected ``[B, N, C]`` map exists whole."""

    def forward(self, x: Tensor) -> Tensor:
        if not lean_active(self):
            return super().forward(x)
        N = x.shape[1]
        global_sum = 0.0

        norm, linear, gelu = self.in_conv

        def local_half(a: int, b: int) -> Tensor:
            nonlocal global_sum
            chunk = norm(x[:, a:b])  # [B, n, C]
            h = fused_linear(chunk.reshape(-1, chunk.shape[-1]), linear, gelu).view(chunk.shape)
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
