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

__all__ = [
    "Attention",
    "add_decomposed_rel_pos",
    "get_rel_pos",
    "softmax_with_policy",
    "window_partition",
    "window_unpartition",
]

# Largest additive rel-pos bias (in elements) built at once: 2**25 floats = 128 MiB in fp32.
# Larger attention problems are split over (batch, query rows) so memory stays bounded.
MAX_BIAS_ELEMENTS = 2**25
# Numerical guard of the policy-masked softmax, as in the official code.
POLICY_SOFTMAX_EPS = 1e-6


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
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
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


def add_decomposed_rel_pos(
    attn: Tensor,
    q: Tensor,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> Tensor:
    """Add the decomposed relative-position bias to attention logits (dense form).

    Args:
        attn: logits ``[B, q_h * q_w, k_h * k_w]``.
        q: unscaled queries ``[B, q_h * q_w, C]``.
        rel_pos_h, rel_pos_w: tables ``[Lh, C]``, ``[Lw, C]``.
        q_size, k_size: ``(h, w)`` of queries and keys.

    Returns:
        logits with the bias, ``[B, q_h * q_w, k_h * k_w]``.
    """
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    B = attn.shape[0]
    q_h, q_w = q_size
    k_h, k_w = k_size
    # [B, q_h, q_w, k_h, k_w] broadcast sum, flattened back to [B, Nq, Nk]
    attn = attn.view(B, q_h, q_w, k_h, k_w) + rel_h[..., :, None] + rel_w[..., None, :]
    return attn.view(B, q_h * q_w, k_h * k_w)


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


def _rel_pos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    hw: tuple[int, int],
) -> Tensor:
    """SDPA with the decomposed rel-pos bias, chunked so no bias exceeds MAX_BIAS_ELEMENTS.

    Args:
        q, k, v: ``[B, heads, N, d]`` with ``N = H * W``.
        rel_pos_h, rel_pos_w: rel-pos tables.
        hw: ``(H, W)`` of the token grid.

    Returns:
        ``[B, heads, N, d]``.
    """
    B, nh, N, d = q.shape
    H, W = hw
    rel_h, rel_w = decomposed_rel_pos_terms(
        q.reshape(B * nh, N, d), rel_pos_h, rel_pos_w, (H, W), (H, W)
    )
    # Contiguous terms make the broadcast sum below contiguous, so the bias needs no copy.
    rel_h = rel_h.contiguous().view(B, nh, H, W, H)
    rel_w = rel_w.contiguous().view(B, nh, H, W, W)
    per_query_row = nh * W * N  # bias elements of one query row of one image
    rows = max(1, min(H, MAX_BIAS_ELEMENTS // per_query_row))
    images = max(1, min(B, MAX_BIAS_ELEMENTS // (per_query_row * rows)))
    out = torch.empty_like(q)
    for b0 in range(0, B, images):
        b1 = min(B, b0 + images)
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            # bias [b, heads, rows, W, H, W] -> [b, heads, rows * W, N]
            bias = rel_h[b0:b1, :, r0:r1, :, :, None] + rel_w[b0:b1, :, r0:r1, :, None, :]
            bias = bias.view(b1 - b0, nh, (r1 - r0) * W, N)
            out[b0:b1, :, r0 * W : r1 * W] = F.scaled_dot_product_attention(
                q[b0:b1, :, r0 * W : r1 * W], k[b0:b1], v[b0:b1], attn_mask=bias
            )
    return out


class Attention(nn.Module):
    """Multi-head self-attention with optional decomposed relative position embeddings.

    Three modes, all on the same weights:
    - plain (``policy is None``, no rel-pos): ``scaled_dot_product_attention``;
    - rel-pos (window blocks, and every block of the teacher): SDPA with the rel-pos terms as an
      additive bias, built in bounded chunks, never the full ``N x N`` logits at once;
    - policy-masked (training of routed blocks): the dense policy softmax of DynamicViT.
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

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project ``[B, N, C]`` tokens to q, k, v, each ``[B, heads, N, d]``."""
        B, N, _ = x.shape
        # [B, N, 3 * C] -> [B, N, 3, heads, d] -> [3, B, heads, N, d]
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

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
        tokens = x.reshape(shape[0], -1, shape[-1])  # [B, N, C]
        q, k, v = self._qkv(tokens)
        if policy is not None:
            out = self._masked_attention(q, k, v, policy, hw)
        elif self.use_rel_pos:
            if hw is None:
                raise ValueError("relative position attention needs [B, H, W, C] tokens")
            out = _rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, hw)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        # [B, heads, N, d] -> [B, N, heads * d]
        out = out.transpose(1, 2).reshape(tokens.shape)
        return self.proj(out).reshape(shape)

    def _masked_attention(
        self, q: Tensor, k: Tensor, v: Tensor, policy: Tensor, hw: tuple[int, int] | None
    ) -> Tensor:
        """Dense attention with the policy-masked softmax (training path), ``[B, heads, N, d]``."""
        B, nh, N, d = q.shape
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, heads, N, N]
        if self.use_rel_pos:
            if hw is None:
                raise ValueError("relative position attention needs [B, H, W, C] tokens")
            attn = add_decomposed_rel_pos(
                attn.reshape(B * nh, N, N),
                q.reshape(B * nh, N, d),
                self.rel_pos_h,
                self.rel_pos_w,
                hw,
                hw,
            ).view(B, nh, N, N)
        return softmax_with_policy(attn, policy) @ v
