"""The auto token cap rule of utils/token_budget.py (memory model with SDPA attention)."""

from __future__ import annotations

import torch
from conftest import tiny_vit

from utils import token_budget
from utils.memory import free_memory_bytes
from utils.token_budget import auto_max_number_token, peak_bytes


class _Model(torch.nn.Module):
    """What auto_max_number_token reads from a MEMatte: the backbone and the padding step."""

    size_divisibility = 32

    def __init__(self) -> None:
        super().__init__()
        self.backbone = tiny_vit()


def test_cap_follows_the_documented_rule():
    model, hw = _Model(), (4096, 4096)
    tokens = (4096 // 16) ** 2
    dim, heads = model.backbone.embed_dim, model.backbone.blocks[0].attn.num_heads
    base = peak_bytes(hw, 0, dim, heads)
    per_token = peak_bytes(hw, 1, dim, heads) - base
    assert per_token == token_budget.ROUTED_FLOATS_PER_CHANNEL * dim * token_budget.FLOAT_BYTES
    # The cap is the largest n with peak(n) <= SAFETY * free.
    for cap in (0, 10, 1000, tokens - 1):
        free = int((base + cap * per_token) / token_budget.SAFETY) + 1
        assert auto_max_number_token(model, hw, "cpu", free_bytes=free) == cap
    # Enough memory removes the cap; too little gives 0 (and a warning).
    assert auto_max_number_token(model, hw, "cpu", free_bytes=100 * 2**30) is None
    assert auto_max_number_token(model, hw, "cpu", free_bytes=2**20) == 0


def test_more_memory_never_lowers_the_cap():
    model, hw = _Model(), (4872, 6017)
    caps = [
        auto_max_number_token(model, hw, "cpu", free_bytes=int(gib * 2**30))
        for gib in (0.5, 1.0, 1.1, 1.2, 1.5, 4.0)
    ]
    numeric = [c if c is not None else float("inf") for c in caps]
    assert numeric == sorted(numeric)


def test_attention_memory_is_quadratic_only_without_a_fused_kernel():
    hw = (1024, 1024)
    linear = peak_bytes(hw, 4000, 384, 6) - peak_bytes(hw, 0, 384, 6)
    quadratic = peak_bytes(hw, 4000, 384, 6, fused_attention=False) - peak_bytes(hw, 0, 384, 6)
    assert quadratic - linear == 2 * 6 * token_budget.FLOAT_BYTES * 4000**2


def test_free_memory_of_the_cpu_is_read():
    assert free_memory_bytes(torch.device("cpu")) > 0
