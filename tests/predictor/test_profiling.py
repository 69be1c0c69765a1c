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

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image, trimap):
        return self.model({"image": image, "trimap": trimap}, patch_decoder=True)["phas"]


@pytest.mark.slow
def test_count_gflops_equals_one_trace_of_the_whole_forward():
    model = build_tiny_mematte().eval()
    model.backbone.max_number_token = 3
    # 1600 px wide: four decoder tiles in a row, the two middle ones of the same shape and
    # region, which count_gflops traces once and counts twice.
    batch = make_benchmark_inputs(64, 1600)
    flops = profiling.count_gflops(model, batch)
    with torch.no_grad():
        whole = profiling._gflops(_WholeForward(model), (batch["image"], batch["trimap"]))
    assert flops["total"] == pytest.approx(whole, rel=1e-6)
    assert flops["backbone"] > 0 and flops["decoder"] > 0


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
        gflops, features = profiling.backbone_gflops(model.backbone, images)
    assert gflops == pytest.approx(whole, rel=1e-3)
    assert torch.equal(features, reference)
    assert "forward" not in vars(model.backbone.blocks[0])  # the modules are restored
