"""The auto token cap rule of engine/token_budget.py."""

from __future__ import annotations

import math

import torch
from conftest import tiny_vit

from engine import token_budget
from engine.token_budget import auto_max_number_token, free_memory_bytes


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = tiny_vit()


def test_cap_follows_the_documented_rule():
    model, cpu = _Model(), torch.device("cpu")
    H = W = 4096
    tokens = (H // 16) * (W // 16)
    heads, dim = model.backbone.blocks[0].attn.num_heads, model.backbone.embed_dim
    free = 8 * 1024**3
    fixed = 4 * H * W * 4 + token_budget.ACTIVATION_COPIES * tokens * dim * 4
    fixed += token_budget.DECODER_TILE_BYTES
    expected = math.floor(math.sqrt((0.5 * free - fixed) / (heads * 4 * 2)))
    assert auto_max_number_token(model, (H, W), cpu, free_bytes=free) == expected
    # More memory never gives a smaller cap; enough memory removes it; too little floors it.
    assert auto_max_number_token(model, (H, W), cpu, free_bytes=2 * free) > expected
    assert auto_max_number_token(model, (512, 512), cpu, free_bytes=free) is None
    tiny = auto_max_number_token(model, (H, W), cpu, free_bytes=1024**3)
    assert tiny == token_budget.MIN_TOKENS


def test_free_memory_of_the_cpu_is_read():
    assert free_memory_bytes(torch.device("cpu")) > 0
