"""The policy-masked attention of the training path, computed over query chunks.

``policy_attention(q, k, v, policy, scale)`` equals the official dense
``softmax_with_policy((q * scale) @ k^T, policy) @ v`` (DynamicViT's masked softmax with MEMatte's
epsilon, see :func:`~modeling.backbone.attention.softmax_with_policy`), forward and backward, but
never holds the ``[B, heads, N, N]`` logits or probabilities: the forward keeps per query only the
row maximum ``m`` (and where it is) and the policy-weighted sum ``S``; the backward recomputes the
probabilities chunk by chunk. Memory is ``O(N * chunk)`` instead of ``O(N^2)`` per head.

Backward, for one query row with ``u_j = exp(a_j - m) * p_j``, ``D = S + eps``,
``P_j = (u_j + eps / N) / D`` and ``dP_j = dO . v_j``, ``delta = sum_j P_j dP_j = dO . O``:

- through the logits, ``m`` held fixed: ``da_j = u_j / D * (dP_j - delta)``;
- through ``m`` (the official max is not detached, so its gradient reaches the arg-max logit):
  ``dm = (S * delta - sum_j u_j dP_j) / D``;
- through the key policy (off the diagonal, which is always kept):
  ``dp_j = exp(a_j - m) / D * (dP_j - delta)``, summed over heads and queries.

References: DynamicViT (Rao et al. 2021); MEMatte (Lin et al. 2025); the chunked recomputation
follows FlashAttention's backward (Dao et al. 2022).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["POLICY_ATTENTION_CHUNK_ELEMENTS", "POLICY_SOFTMAX_EPS", "policy_attention"]

# Numerical guard of the policy-masked softmax, as in the official code.
POLICY_SOFTMAX_EPS = 1e-6
# Logit elements ([B, heads, queries, N]) of one query chunk: 2**24 floats = 64 MiB in fp32.
POLICY_ATTENTION_CHUNK_ELEMENTS = 2**24


def _chunk_size(q: Tensor, num_keys: int) -> int:
    """Query rows per chunk so that one chunk's logits hold ``POLICY_ATTENTION_CHUNK_ELEMENTS``."""
    B, nh = q.shape[:2]
    return max(1, POLICY_ATTENTION_CHUNK_ELEMENTS // (B * nh * num_keys))


def _diagonal(q0: int, q1: int, num_keys: int, device: torch.device) -> Tensor:
    """``[q1 - q0, N]`` float32 map, 1 where key index == query index (rows ``q0:q1``)."""
    diagonal = torch.zeros(q1 - q0, num_keys, device=device)
    rows = torch.arange(q1 - q0, device=device)
    diagonal[rows, rows + q0] = 1.0
    return diagonal


def _key_policy(policy: Tensor, diagonal: Tensor) -> Tensor:
    """``[B, 1, n, N]`` float32 key policy of a chunk of query rows, the diagonal always kept."""
    keys = policy.reshape(policy.shape[0], 1, 1, -1).float()
    return keys + (1.0 - keys) * diagonal  # a token always attends to itself


class _PolicyAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, policy: Tensor, scale: float) -> Tensor:
        N = k.shape[2]
        stats = q.shape[:3] + (1,)  # one value per query row
        out = torch.empty_like(q)
        row_max, total = q.new_empty(stats), q.new_empty(stats, dtype=torch.float32)
        arg_max = torch.empty(stats, dtype=torch.long, device=q.device)
        step = _chunk_size(q, N)
        for q0 in range(0, q.shape[2], step):
            rows = slice(q0, min(q0 + step, q.shape[2]))
            logits = (q[:, :, rows] * scale) @ k.transpose(-2, -1)  # [B, heads, n, N]
            m, where = logits.max(dim=-1, keepdim=True)
            diagonal = _diagonal(rows.start, rows.stop, N, q.device)
            u = (logits - m).float().exp_().mul_(_key_policy(policy, diagonal))
            s = u.sum(dim=-1, keepdim=True)
            weights = u.add_(POLICY_SOFTMAX_EPS / N).div_(s + POLICY_SOFTMAX_EPS)
            out[:, :, rows] = weights.to(v.dtype) @ v
            row_max[:, :, rows], arg_max[:, :, rows], total[:, :, rows] = m, where, s
        ctx.save_for_backward(q, k, v, policy, out, row_max, arg_max, total)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, policy, out, row_max, arg_max, total = ctx.saved_tensors
        N, eps = k.shape[2], POLICY_SOFTMAX_EPS
        grad_out = grad_out.float()
        k32, v32 = k.float(), v.float()
        grad_q = torch.empty_like(q, dtype=torch.float32)
        grad_k, grad_v = torch.zeros_like(k32), torch.zeros_like(v32)
        grad_policy = torch.zeros(policy.shape[0], N, device=q.device)
        delta = (grad_out * out.float()).sum(dim=-1, keepdim=True)  # dO . O per query row
        step = _chunk_size(q, N)
        for q0 in range(0, q.shape[2], step):
            rows = slice(q0, min(q0 + step, q.shape[2]))
            logits = (q[:, :, rows] * ctx.scale) @ k.transpose(-2, -1)
            e = (logits - row_max[:, :, rows]).float().exp_()  # exp(a - m)
            diagonal = _diagonal(rows.start, rows.stop, N, q.device)
            u = e * _key_policy(policy, diagonal)
            denominator = total[:, :, rows] + eps
            d_weights = grad_out[:, :, rows] @ v32.transpose(-2, -1)  # dP
            excess = (d_weights - delta[:, :, rows]).div_(denominator)  # (dP - delta) / D
            grad_policy += (e * excess * (1.0 - diagonal)).sum(dim=(1, 2))
            d_max = total[:, :, rows] * delta[:, :, rows] - (u * d_weights).sum(-1, keepdim=True)
            d_logits = (u * excess).scatter_add_(-1, arg_max[:, :, rows], d_max / denominator)
            weights = u.add_(eps / N).div_(denominator)
            grad_v += weights.transpose(-2, -1) @ grad_out[:, :, rows]
            grad_q[:, :, rows] = ctx.scale * (d_logits @ k32)
            grad_k += ctx.scale * (d_logits.transpose(-2, -1) @ q[:, :, rows].float())
        grad_policy = grad_policy.view_as(policy).to(policy.dtype)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_policy, None


def policy_attention(q: Tensor, k: Tensor, v: Tensor, policy: Tensor, scale: float) -> Tensor:
    """``softmax_with_policy((q * scale) @ k^T, policy) @ v`` in query chunks (module docstring).

    Args:
        q, k, v: ``[B, heads, N, d]``.
        policy: ``[B, N, 1]`` 0/1 routing decisions (1 = routed; gradients flow to it).
        scale: the attention scale.

    Returns:
        ``[B, heads, N, d]`` in the dtype of ``q``.
    """
    return _PolicyAttention.apply(q, k, v, policy, scale)
