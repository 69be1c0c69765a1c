"""predictor/profiling.py: FLOP counting against whole-forward traces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.synthetic import make_benchmark_inputs
from predictor import profiling
from tests.helpers import build_tiny_mematte

# fvcore imports torch.jit.script, which this torch deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


TINY_OVERRIDES = [
    "model.backbone.embed_dim=64",
    "model.backbone.num_heads=2",
    "model.decoder.in_chans=64",
]


class _SDPA(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_flops_are_counted():
    q = torch.randn(2, 3, 10, 8)
    k = torch.randn(2, 3, 12, 8)
    v = torch.randn(2, 3, 12, 5)
    gflops = profiling._gflops(_SDPA(), (q, k, v))
    assert gflops * 1e9 == pytest.approx(2 * 3 * 10 * 12 * (8 + 5))


class _WholeForward(nn.Module):
    """The inference forward (patch decoder on) with tensors in and out, for one fvcore trace."""

    def __init__(self, model: nn.Module, clamp_known: bool) -> None:
        super().__init__()
        self.model = model
        self.clamp_known = clamp_known

    def forward(self, image, trimap):
        batch = {"image": image, "trimap": trimap}
        return self.model(batch, patch_decoder=True, clamp_known=self.clamp_known)["phas"]


@pytest.mark.slow
@pytest.mark.parametrize("clamp_known", [False, True])
def test_count_gflops_equals_one_trace_of_the_whole_forward(clamp_known):
    """The decoder's count comes from its block plans: it must be what the traced forward runs,
    for the raw forward and for the predictor's clamped call (which skips known blocks)."""
    model = build_tiny_mematte().eval()
    model.backbone.max_number_token = 3
    batch = make_benchmark_inputs(200, 1600, unknown=0.05)  # four decoder tiles in a row
    flops = profiling.count_gflops(model, batch, clamp_known=clamp_known)
    with torch.no_grad():
        whole = profiling._gflops(
            _WholeForward(model, clamp_known), (batch["image"], batch["trimap"])
        )
    assert flops["total"] == pytest.approx(whole, rel=1e-6)
    assert flops["backbone"] > 0 and flops["decoder"] > 0
    assert sum(flops["parts"].values()) == pytest.approx(flops["total"])
    assert {"backbone.mlp", "backbone.window_attention", "decoder.head"} <= set(flops["parts"])


def test_clamped_decoder_work_is_a_fraction_of_the_raw_forward():
    model = build_tiny_mematte().eval()
    trimap = make_benchmark_inputs(1024, 1024, unknown=0.05)["trimap"]
    raw = profiling.decoder_work(model, trimap, clamp_known=False)
    clamped = profiling.decoder_work(model, trimap, clamp_known=True)
    for stage in raw:
        assert 0 < clamped[stage]["macs"] < raw[stage]["macs"]
    assert raw["head"]["pixels"] == 1024 * 1024  # every output pixel, once
    unknown = int(((trimap != 0) & (trimap != 1)).sum())
    assert unknown <= clamped["head"]["pixels"] < 0.5 * raw["head"]["pixels"]


class _Features(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images):
        return self.backbone(images).features


@pytest.mark.slow
def test_module_by_module_backbone_count_equals_one_whole_trace():
    model = build_tiny_mematte().eval()
    model.backbone.max_number_token = 5
    with torch.no_grad():
        images, _ = model.preprocess(make_benchmark_inputs(96, 160))
        reference = model.backbone(images).features
        whole = profiling._gflops(_Features(model.backbone), (images,))
        parts, features = profiling.backbone_gflops(model.backbone, images)
    assert sum(parts.values()) == pytest.approx(whole, rel=1e-3)
    assert parts["backbone.global_attention"] > 0 and parts["backbone.ltrm"] > 0
    assert torch.equal(features, reference)
    assert "forward" not in vars(model.backbone.blocks[0])  # the modules are restored
