"""predictor/token_budget.py: the memory model against measured peaks, and the auto token cap
rule."""

from __future__ import annotations

import pytest
import torch

from predictor.token_budget import SAFETY, auto_max_number_token, peak_bytes
from tests.helpers import tiny_vit
from utils.memory import free_memory_bytes

MIB = 2**20
# Peak-RSS increments that tools/benchmark.py measured (the README's benchmark table: CPU, fp32,
# batch 1, patch decoder, glibc thresholds fixed, random weights): (embed dim, heads), input
# (H, W), tokens in each global attention, increment in MiB over the idle process.
VIT_S, VIT_B = (384, 6), (768, 12)
MEASURED_INCREMENTS = [
    (VIT_S, (1024, 1024), 1024, 191),
    (VIT_S, (2048, 2048), 4096, 303),
    (VIT_S, (4096, 4096), 16384, 678),
    (VIT_S, (4872, 6017), 18500, 852),
    (VIT_B, (2048, 2048), 4096, 530),
]
# The increment leaves out the inputs, built before the idle measurement: float32 RGB + trimap.
INPUT_BYTES_PER_PIXEL = 4 * 4
# The model may over-plan, but not so much that the auto cap throws away most of the memory.
MAX_OVERESTIMATE = 1.5


@pytest.mark.parametrize(("vit", "hw", "routed", "increment_mib"), MEASURED_INCREMENTS)
def test_memory_model_covers_the_measured_peaks(vit, hw, routed, increment_mib):
    embed_dim, heads = vit
    measured = increment_mib * MIB + INPUT_BYTES_PER_PIXEL * hw[0] * hw[1]
    planned = peak_bytes(hw, routed, embed_dim, heads)
    # What the cap rule guarantees: a forward planned to fit SAFETY * free did fit in free.
    assert planned / SAFETY >= measured
    assert planned <= MAX_OVERESTIMATE * measured


class _Model(torch.nn.Module):
    """What auto_max_number_token reads from a MEMatte: the backbone and the padding step."""

    size_divisibility = 32

    def __init__(self) -> None:
        super().__init__()
        self.backbone = tiny_vit()


def test_cap_is_the_largest_token_count_whose_peak_fits():
    model, hw = _Model(), (4096, 4096)
    dim, heads = model.backbone.embed_dim, model.backbone.blocks[0].attn.num_heads
    tokens = (4096 // 16) ** 2
    # Free memory between what no global token and what every token needs.
    least, most = (peak_bytes(hw, n, dim, heads) / SAFETY for n in (0, tokens))
    for fraction in (0.1, 0.5, 0.9):
        free = int(least + fraction * (most - least))
        cap = auto_max_number_token(model, hw, "cpu", free_bytes=free)
        assert 0 < cap < tokens
        assert peak_bytes(hw, cap, dim, heads) <= SAFETY * free
        assert peak_bytes(hw, cap + 1, dim, heads) > SAFETY * free
    # Enough memory removes the cap; too little gives 0 (and a warning).
    assert auto_max_number_token(model, hw, "cpu", free_bytes=100 * 2**30) is None
    assert auto_max_number_token(model, hw, "cpu", free_bytes=MIB) == 0


def test_more_memory_never_lowers_the_cap():
    model, hw = _Model(), (4872, 6017)
    caps = [
        auto_max_number_token(model, hw, "cpu", free_bytes=int(gib * 2**30))
        for gib in (0.5, 1.0, 1.1, 1.2, 1.5, 4.0)
    ]
    numeric = [c if c is not None else float("inf") for c in caps]
    assert numeric == sorted(numeric)


def test_attention_memory_is_quadratic_only_without_a_fused_kernel():
    hw, routed, heads = (1024, 1024), 4000, 6
    linear = peak_bytes(hw, routed, 384, heads) - peak_bytes(hw, 0, 384, heads)
    unfused = peak_bytes(hw, routed, 384, heads, fused_attention=False)
    quadratic = unfused - peak_bytes(hw, 0, 384, heads)
    # The float32 logits and weights of every head: 2 x heads x 4 bytes x routed^2.
    assert quadratic - linear == 2 * heads * 4 * routed**2


def test_free_memory_of_the_cpu_is_read():
    assert free_memory_bytes(torch.device("cpu")) > 0
