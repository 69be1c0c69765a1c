"""Training-memory machinery gives the reference values: chunked policy attention, checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from modeling.backbone import policy_attention as policy_attention_module
from modeling.backbone.attention import softmax_with_policy
from modeling.backbone.policy_attention import policy_attention
from tests.helpers import build_tiny_mematte, make_batch

RELATIVE_TOL = 1e-5
DROP_PATH = 0.3


def _assert_relative(actual, expected, tol=RELATIVE_TOL):
    scale = expected.abs().max().clamp(min=1e-12)
    assert ((actual - expected).abs().max() / scale).item() < tol


@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
def test_policy_attention_equals_dense_softmax_with_policy(monkeypatch, chunk_rows):
    gen = torch.Generator().manual_seed(0)
    B, heads, N, d = 2, 3, 40, 8
    q, k, v = (torch.randn(B, heads, N, d, generator=gen, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        q[0, 0, :6] *= 8  # rows whose largest logit comes from an unrouted key (epsilon matters)
    policy = (torch.rand(B, N, 1, generator=gen) < 0.3).float()
    policy[1] = 0.0  # an image with nothing routed: every token attends to itself only
    policy.requires_grad_()
    scale = d**-0.5
    monkeypatch.setattr(
        policy_attention_module, "POLICY_ATTENTION_CHUNK_ELEMENTS", chunk_rows * B * heads * N
    )
    dense = softmax_with_policy((q * scale) @ k.transpose(-2, -1), policy) @ v
    chunked = policy_attention(q, k, v, policy, scale)
    _assert_relative(chunked, dense)
    grad_out = torch.randn(dense.shape, generator=gen)
    expected = torch.autograd.grad(dense, (q, k, v, policy), grad_out)
    actual = torch.autograd.grad(chunked, (q, k, v, policy), grad_out)
    for name, a, e in zip(["q", "k", "v", "policy"], actual, expected, strict=True):
        assert a.shape == e.shape, name
        _assert_relative(a, e)


def _step(model: nn.Module, batch: dict, seed: int) -> tuple[dict, dict]:
    torch.manual_seed(seed)  # gumbel routing and drop path draw from the global generator
    out = model(batch)
    loss = sum(v for k, v in out.items() if k.startswith("loss_"))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items() if k.startswith("loss_")}, grads


@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_losses_gradients_and_statistics():
    model = build_tiny_mematte(with_teacher=True).train()
    for blk in model.backbone.blocks:  # stochastic depth: the replay must draw the same masks
        blk.drop_path = DropPath(DROP_PATH)
    checkpointed = copy.deepcopy(model)
    checkpointed.backbone.use_act_checkpoint = True
    checkpointed.decoder.use_act_checkpoint = True
    batch = make_batch(2, 64, 64, train=True)
    losses, grads = _step(model, batch, seed=3)
    losses_ckpt, grads_ckpt = _step(checkpointed, batch, seed=3)
    assert losses.keys() == losses_ckpt.keys()
    for name in losses:
        torch.testing.assert_close(losses_ckpt[name], losses[name], rtol=1e-6, atol=1e-7)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7)
    buffers = dict(model.decoder.named_buffers())
    for name, value in checkpointed.decoder.named_buffers():  # BatchNorm updated once per step
        torch.testing.assert_close(value, buffers[name], rtol=0, atol=0)
