"""Multi-head attention with decomposed relative position, policy masking and window helpers.

References: ViTDet (Li et al. 2022), MViTv2 decomposed rel-pos, DynamicViT (Rao et al. 2021)
policy-masked softmax, MEMatte (Lin et al. 2025).

Shape vocabulary: tokens ``[B, H, W, C]`` or ``[B, N, C]`` with ``N = H * W``; a routing policy
``[B, N, 1]`` holds 1 for tokens routed to global attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .policy_attention import POLICY_SOFTMAX_EPS, policy_attention

__all__ = [
    "Attention",
    "decomposed_rel_pos_terms",
    "get_rel_pos",
    "rel_pos_bias",
    "softmax_with_policy",
    "window_partition",
    "window_unpartition",
]


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Split tokens into non-overlapping windows, zero-padding the bottom/right edges.

    Args:
        x: tokens ``[B, H, W, C]``.
        window_size: window side in tokens.

    Returns:
        windows ``[B * num_windows, window_size, window_size, C]`` and the padded ``(Hp, Wp)``.
    """
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    # [B, Hp/ws, ws, Wp/ws, ws, C] -> [B, Hp/ws, Wp/ws, ws, ws, C] -> windows
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`window_partition`: reassemble windows and drop the padding.

    Args:
        windows: ``[B * num_windows, window_size, window_size, C]``.
        window_size: window side in tokens.
        pad_hw: padded ``(Hp, Wp)``.
        hw: original ``(H, W)``.

    Returns:
        tokens ``[B, H, W, C]``.
    """
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // ((Hp // window_size) * (Wp // window_size))
    # windows -> [B, Hp/ws, Wp/ws, ws, ws, C] -> [B, Hp/ws, ws, Wp/ws, ws, C] -> [B, Hp, Wp, C]
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative position embeddings for every (query, key) offset along one axis.

    The table is linearly resized when its length differs from ``2 * max(q, k) - 1``.

    Args:
        q_size: query length along the axis.
        k_size: key length along the axis.
        rel_pos: table ``[L, C]``.

    Returns:
        ``[q_size, k_size, C]``.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1  # no int(): a traced (ONNX) size stays dynamic
    if rel_pos.shape[0] != max_rel_dist:
        # [L, C] -> [1, C, L] for 1-d interpolation -> [max_rel_dist, C]
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    # Scale the coordinates of the shorter side when q and k lengths differ.
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def decomposed_rel_pos_terms(
    q: Tensor,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """The two factors of the decomposed relative-position bias.

    Args:
        q: unscaled queries ``[B, q_h * q_w, C]`` (B may fold batch, windows and heads).
        rel_pos_h: height table ``[Lh, C]``.
        rel_pos_w: width table ``[Lw, C]``.
        q_size: ``(q_h, q_w)``.
        k_size: ``(k_h, k_w)``.

    Returns:
        ``rel_h [B, q_h, q_w, k_h]`` and ``rel_w [B, q_h, q_w, k_w]``; the bias of query
        ``(i, j)`` on key ``(m, n)`` is ``rel_h[..., i, j, m] + rel_w[..., i, j, n]``.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)
    r_q = q.reshape(q.shape[0], q_h, q_w, -1)  # [B, q_h, q_w, C]
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    return rel_h, rel_w


def softmax_with_policy(attn: Tensor, policy: Tensor, eps: float = POLICY_SOFTMAX_EPS) -> Tensor:
    """Softmax over keys that only lets routed keys (and each token itself) receive weight.

    ``(exp(a - max) * p + eps / N) / (sum(exp(a - max) * p) + eps)`` computed in float32, with
    ``p`` the key policy plus the diagonal, exactly as the official training path.

    Args:
        attn: logits ``[B, heads, N, N]``.
        policy: ``[B, N, 1]`` with 1 for routed tokens.
        eps: numerical guard.

    Returns:
        attention weights ``[B, heads, N, N]`` in the dtype of ``attn``.
    """
    B, N, _ = policy.shape
    key_policy = policy.reshape(B, 1, 1, N)
    eye = torch.eye(N, dtype=key_policy.dtype, device=key_policy.device).view(1, 1, N, N)
    key_policy = key_policy + (1.0 - key_policy) * eye  # a token always attends to itself
    max_logit = attn.max(dim=-1, keepdim=True).values
    weights = (attn - max_logit).to(torch.float32).exp() * key_policy.to(torch.float32)
    weights = (weights + eps / N) / (weights.sum(dim=-1, keepdim=True) + eps)
    return weights.to(attn.dtype)


def rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, hw: tuple[int, int]) -> Tensor:
    """The decomposed relative-position bias of self-attention on an ``H x W`` token grid.

    Args:
        q: unscaled queries ``[B, heads, N, d]`` with ``N = H * W``.
        rel_pos_h, rel_pos_w: tables ``[Lh, d]``, ``[Lw, d]``.
        hw: ``(H, W)``.

    Returns:
        additive bias ``[B, heads, N, N]``.
    """
    B, nh, N, d = q.shape
    H, W = hw
    rel_h, rel_w = decomposed_rel_pos_terms(q.reshape(B * nh, N, d), rel_pos_h, rel_pos_w, hw, hw)
    # [B*heads, H, W, H, 1] + [B*heads, H, W, 1, W] -> [B, heads, N, N]
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, nh, N, N)


class Attention(nn.Module):
    """Multi-head self-attention with optional decomposed relative position embeddings.

    Three modes on the same weights: plain ``scaled_dot_product_attention``; with the rel-pos
    bias as an additive mask (window blocks, and every block of the teacher); and, given a
    routing policy, the dense policy-masked softmax of DynamicViT (training of routed blocks).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """
        Args:
            dim: channels.
            num_heads: attention heads.
            qkv_bias: learnable bias on q, k, v.
            use_rel_pos: add decomposed relative position embeddings.
            rel_pos_zero_init: zero-initialise the rel-pos tables.
            input_size: token grid ``(h, w)`` that sizes the rel-pos tables.
        """
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: Tensor, policy: Tensor | None = None) -> Tensor:
        """Attend among all tokens of each batch item.

        Args:
            x: ``[B, H, W, C]`` (rel-pos needs the grid) or ``[B, N, C]``.
            policy: optional ``[B, N, 1]`` routing policy for the masked training softmax.

        Returns:
            same shape as ``x``.
        """
        shape = x.shape
        hw = (shape[1], shape[2]) if x.ndim == 4 else None
        if self.use_rel_pos and hw is None:
            raise ValueError("relative position attention needs [B, H, W, C] tokens")
        tokens = x.reshape(shape[0], -1, shape[-1])  # [B, N, C]
        # [B, N, 3 * C] -> [B, N, 3, heads, d] -> 3 x [B, heads, N, d]
        qkv = self.qkv(tokens).reshape(*tokens.shape[:2], 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if policy is not None:
            out = self.masked_attention(q, k, v, policy, hw)
        elif self.use_rel_pos:
            out = self.rel_pos_attention(q, k, v, hw)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(tokens.shape)  # [B, heads, N, d] -> [B, N, C]
        return self.proj(out).reshape(shape)

    def rel_pos_attention(self, q: Tensor, k: Tensor, v: Tensor, hw: tuple[int, int]) -> Tensor:
        """SDPA with the rel-pos bias as an additive mask; q, k, v, output ``[B, heads, N, d]``."""
        bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, hw)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def masked_attention(
        self, q: Tensor, k: Tensor, v: Tensor, policy: Tensor, hw: tuple[int, int] | None
    ) -> Tensor:
        """Attention with the policy-masked softmax (training path), ``[B, heads, N, d]``.

        Without rel-pos (the student's routed blocks) it runs in query chunks
        (:func:`policy_attention`, the same values and gradients without the ``N x N``
        probabilities); with rel-pos it is the dense official formula.
        """
        if not self.use_rel_pos:
            return policy_attention(q, k, v, policy, self.scale)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, heads, N, N]
        attn = attn + rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, hw)
        return softmax_with_policy(attn, policy) @ v
