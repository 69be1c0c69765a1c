"""The memory-lean inference path (chunks, strips, decoder regions) equals the plain forward."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_mematte, make_batch

from modeling.backbone import ltrm as ltrm_module
from modeling.backbone import router as router_module
from modeling.backbone import vit as vit_module
from modeling.decoder import detail_capture


@pytest.mark.parametrize("cap", [None, 5])
def test_lean_inference_path_equals_plain_path(monkeypatch, cap):
    """Chunked/strip-wise inference (no autograd) gives the plain eval forward's outputs."""
    model = build_tiny_mematte(seed=1).eval()
    model.backbone.max_number_token = cap
    batch = make_batch(1, 160, 224, seed=4)
    with torch.enable_grad():  # autograd on: the plain (unchunked, out-of-place) path
        plain = model(batch)
    # Tiny chunks so that every strip/chunk loop runs several times with halos.
    monkeypatch.setattr(vit_module, "MLP_CHUNK_TOKENS", 7)
    monkeypatch.setattr(vit_module, "WINDOW_CHUNK_TOKENS", 16)
    monkeypatch.setattr(ltrm_module, "STRIP_TOKENS", 20)
    monkeypatch.setattr(detail_capture, "STRIP_ROWS", 24)
    monkeypatch.setattr(router_module, "CHUNK_TOKENS", 7)
    with torch.inference_mode():
        lean = model(batch)
    for a, b in zip(plain["keep"], lean["keep"]):
        assert torch.equal(a, b)
    for a, b in zip(plain["router_scores"], lean["router_scores"]):
        torch.testing.assert_close(b, a.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(lean["phas"], plain["phas"].detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("strip_rows", [128, 16])
def test_decoder_region_equals_full_decoding(monkeypatch, strip_rows):
    monkeypatch.setattr(detail_capture, "STRIP_ROWS", strip_rows)
    model = build_tiny_mematte().eval()
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, 64, 6, 5, generator=gen)
    images = torch.randn(1, 4, 96, 80, generator=gen)
    with torch.no_grad():
        full = model.decoder(features, images)["phas"]
        region = ((17, 70), (3, 41))
        part = model.decoder(features, images, region=region)["phas"]
    torch.testing.assert_close(part, full[..., 17:70, 3:41], atol=1e-6, rtol=0)
