"""The lean inference path equals the reference model, piece by piece and end to end."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeling.backbone.router import Router
from modeling.decoder.detail_capture import force_known, unknown_pixels
from modeling.lean import backbone as lean_backbone
from modeling.lean import blocks as lean_blocks
from modeling.lean import decoder as lean_decoder
from modeling.lean import lean_active, to_lean, to_reference
from modeling.lean.chunking import map_strips
from modeling.lean.cone import crop
from modeling.lean.decoder import LeanDetailCapture, fold_batchnorm
from modeling.lean.fused import fused_linear
from modeling.lean.input import NormalizedInput
from modeling.meta_arch.mematte import padded_size
from tests.helpers import TINY_DIM, build_tiny_mematte, make_batch

# Float32 results of the same arithmetic, regrouped by chunks and strips.
ATOL = 1e-5


def _tiny_chunks(monkeypatch) -> None:
    """Chunk and strip sizes so small that every lean loop runs several times, with halos."""
    monkeypatch.setattr(lean_backbone, "MLP_CHUNK_TOKENS", 7)
    monkeypatch.setattr(lean_backbone, "WINDOW_CHUNK_TOKENS", 16)
    monkeypatch.setattr(lean_backbone, "STRIP_TOKENS", 20)
    monkeypatch.setattr(lean_backbone, "ROUTER_CHUNK_TOKENS", 7)
    monkeypatch.setattr(lean_backbone, "QUERY_CHUNK_TOKENS", 5)
    monkeypatch.setattr(lean_backbone, "EMBED_STRIP_PATCH_ROWS", 1)
    monkeypatch.setattr(lean_backbone, "MAX_BIAS_ELEMENTS", 300)
    monkeypatch.setattr(lean_blocks, "DECODER_BLOCK", 16)
    monkeypatch.setattr(lean_blocks, "DECODER_BOX_ROWS", 24)


def _reference_copy(model: nn.Module) -> nn.Module:
    return to_reference(copy.deepcopy(model))


def _perturb_batchnorm_(model: nn.Module, seed: int = 0) -> None:
    """Running statistics away from (0, 1), so that folding them matters."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(0.3 * torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))


def test_configured_model_is_lean_and_reference_on_request():
    model = build_tiny_mematte()
    names = {type(m).__name__ for m in model.modules()}
    assert {"LeanMEMatte", "LeanBlock", "LeanDetailCapture", "LeanRouter", "LeanLTRM"} <= names
    reference = _reference_copy(model)
    assert not any(type(m).__name__.startswith("Lean") for m in reference.modules())
    assert reference.state_dict().keys() == model.state_dict().keys()
    assert to_lean(reference).state_dict().keys() == model.state_dict().keys()


def test_lean_active_only_in_eval_without_autograd():
    module = nn.Linear(2, 2)
    with torch.no_grad():
        assert not lean_active(module)  # train mode
        module.eval()
        assert lean_active(module)
    assert not lean_active(module)  # autograd on


@pytest.mark.parametrize("cap", [None, 5])
def test_lean_forward_equals_reference_batch_of_two(monkeypatch, cap):
    model = build_tiny_mematte(seed=1).eval()
    _perturb_batchnorm_(model)
    model.backbone.max_number_token = cap
    reference = _reference_copy(model)
    batch = make_batch(2, 160, 224, seed=4)
    _tiny_chunks(monkeypatch)
    with torch.inference_mode():
        lean = model(batch)
        plain = reference(batch)
    assert lean["phas"].shape == (2, 1, 160, 224)
    for a, b in zip(plain["keep"], lean["keep"], strict=True):
        assert torch.equal(a, b)
    if cap is not None:
        assert all(int(k[i].sum()) <= cap for k in lean["keep"] for i in range(2))
    for a, b in zip(plain["router_scores"], lean["router_scores"], strict=True):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    torch.testing.assert_close(lean["phas"], plain["phas"], atol=ATOL, rtol=0)


def test_lean_backbone_features_equal_reference_on_a_cropped_input(monkeypatch):
    model = build_tiny_mematte(seed=2).eval()
    reference = _reference_copy(model)
    batch = make_batch(1, 100, 60, seed=6)
    _tiny_chunks(monkeypatch)
    with torch.no_grad():
        images, hw = reference.preprocess(batch)
        source = NormalizedInput(
            batch["image"], batch["trimap"], model.pixel_mean, model.pixel_std, images.shape[-2:]
        )
        lean = model.backbone(source)
        plain = reference.backbone(images)
    torch.testing.assert_close(lean.features, plain.features, atol=ATOL, rtol=0)


def test_normalized_input_crops_equal_the_padded_input():
    model = build_tiny_mematte()
    batch = make_batch(2, 70, 90, seed=5)
    images, hw = model.preprocess(batch)  # padded to 96 x 96
    source = NormalizedInput(
        batch["image"], batch["trimap"], model.pixel_mean, model.pixel_std, padded_size(hw, 32)
    )
    assert source.shape == images.shape and source.hw == (70, 90)
    padded = F.pad(images, (0, 20, 0, 20))  # zeros beyond the padded input too
    for y0, y1, x0, x1 in [(0, 96, 0, 96), (10, 50, 60, 96), (64, 116, 80, 116), (90, 96, 0, 7)]:
        assert torch.equal(source.crop(y0, y1, x0, x1), padded[..., y0:y1, x0:x1])


def test_masked_training_and_lean_sparse_paths_agree_for_a_fixed_policy(monkeypatch):
    model = build_tiny_mematte(seed=3)
    block = model.backbone.blocks[1]
    assert block.use_efficient_block
    x = torch.randn(2, 6, 5, TINY_DIM)
    policy = (torch.rand(2, 30, 1, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    policy[1] = 0.0  # an image with no routed token takes the LTRM only
    _tiny_chunks(monkeypatch)
    with torch.no_grad():
        block.train()
        masked = block(x, policy)
        block.eval()
        sparse = block(x, policy)  # lean: chunked MLP, LTRM strips, in-place residuals
    torch.testing.assert_close(sparse, masked, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize(("block", "box_rows"), [(64, 128), (8, 16), (4, 3)])
def test_decoder_region_equals_reference_full_decoding(monkeypatch, block, box_rows):
    monkeypatch.setattr(lean_blocks, "DECODER_BLOCK", block)
    monkeypatch.setattr(lean_blocks, "DECODER_BOX_ROWS", box_rows)
    model = build_tiny_mematte().eval()
    _perturb_batchnorm_(model, seed=1)
    reference = _reference_copy(model.decoder)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, TINY_DIM, 6, 5, generator=gen)
    images = torch.randn(1, 4, 96, 80, generator=gen)
    region = ((17, 70), (3, 41))
    with torch.no_grad():
        full = reference(features, images)["phas"]
        part = model.decoder(features, images, region=region)["phas"]
        whole = model.decoder(features, images)["phas"]
    torch.testing.assert_close(part, full[..., 17:70, 3:41], atol=1e-6, rtol=0)
    torch.testing.assert_close(whole, full, atol=1e-6, rtol=0)


def test_folded_batchnorm_equals_conv_then_batchnorm():
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True)
    bn = nn.BatchNorm2d(5).eval()
    _perturb_batchnorm_(bn)
    with torch.no_grad():
        bn.weight.normal_(generator=gen)
        bn.bias.normal_(generator=gen)
        x = torch.randn(2, 3, 9, 7, generator=gen)
        weight, bias = fold_batchnorm(conv, bn)
        torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1), bn(conv(x)))


def test_folded_weights_follow_weight_updates():
    model = build_tiny_mematte().eval()
    decoder = model.decoder
    assert isinstance(decoder, LeanDetailCapture)
    features, images = torch.randn(1, TINY_DIM, 4, 4), torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        before = decoder(features, images)["phas"]
        assert torch.equal(decoder(features, images)["phas"], before)  # cached fold reused
        state = {k: v.clone() for k, v in decoder.state_dict().items()}
        state["matting_head.matting_convs.1.running_mean"] += 1.0
        decoder.load_state_dict(state)
        after = decoder(features, images)["phas"]
        expected = _reference_copy(decoder)(features, images)["phas"]
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, expected, atol=1e-6, rtol=0)


def test_routers_score_in_float32_under_bf16_autocast():
    model = build_tiny_mematte().eval()
    batch = make_batch(1, 64, 96, seed=7)
    seen = []
    hooks = [
        router.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
        for router in model.backbone.routers
    ]
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores = model(batch)["router_scores"]
        for hook in hooks:
            hook.remove()
        assert [out.dtype for out in scores] == [torch.float32] * len(model.backbone.routers)
        assert {(tokens.dtype, out.dtype) for _, tokens, out in seen} == {
            (torch.float32, torch.float32)
        }
        # Each router's scores under autocast are its float32 scores of the same tokens (the
        # tokens themselves differ from an fp32 run: the blocks before it ran in bf16).
        for router, tokens, out in seen:
            torch.testing.assert_close(out, router(tokens), atol=1e-6, rtol=1e-6)


def test_lean_router_equals_reference(monkeypatch):
    router = Router(TINY_DIM).eval()
    x = torch.randn(2, 53, TINY_DIM)
    monkeypatch.setattr(lean_backbone, "ROUTER_CHUNK_TOKENS", 10)
    with torch.no_grad():
        expected = router(x)
        lean = to_lean(router)(x)
    assert type(router).__name__ == "LeanRouter"
    torch.testing.assert_close(lean, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("size", "halo"), [(1, 0), (3, 1), (4, 2), (50, 2)])
def test_map_strips_of_a_local_op_equals_the_whole_op(size, halo):
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 2, 2 * halo + 1, padding=halo)
    x = torch.randn(1, 3, 11, 6, generator=gen)
    with torch.no_grad():
        whole = conv(x)
        strips = map_strips(lambda a, b: conv(x[:, :, a:b]), 11, size, dim=2, halo=halo)
    torch.testing.assert_close(strips, whole, atol=1e-6, rtol=0)


def test_map_strips_in_place_update():
    x = torch.arange(10.0).view(5, 2)
    out = map_strips(lambda a, b: x[a:b].mul_(2), 5, 2, dim=0, out=x)
    assert out is x
    assert torch.equal(x, 2 * torch.arange(10.0).view(5, 2))


def _ring_batch(batch: int, height: int, width: int, seed: int) -> dict:
    """Images with large known regions: a foreground disk, an unknown ring of 12 px."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    radius = ((yy - height / 2) ** 2 + (xx - width / 3) ** 2).sqrt()
    trimap = (radius < height / 3).float()
    trimap[(radius - height / 3).abs() < 12] = 128 / 255  # as read from a PNG: value / 255
    return {"image": image, "trimap": trimap.expand(batch, 1, height, width).contiguous()}


def _band_trimap(kind: str, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """``[1, 1, H, W]`` trimaps (file levels / 255) of the kinds block-sparse decoding meets:
    a thin band (2 px), a thick one (60 px), scattered unknown pixels, all unknown."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    edge = height / 3 + 10 * torch.sin(xx / 17.0)  # a wavy horizontal edge
    trimap = (yy > edge).float()
    if kind == "thin":
        trimap[(yy - edge).abs() < 1] = 128 / 255
    elif kind == "thick":
        trimap[(yy - edge).abs() < 30] = 128 / 255
    elif kind == "scattered":
        trimap[torch.rand(height, width, generator=gen) < 0.002] = 128 / 255
    else:
        trimap.fill_(128 / 255)
    return trimap[None, None]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "kind"),
    [
        ((600, 540), "ring"),
        ((530, 300), "ring"),
        ((96, 64), "ring"),
        ((577, 611), "thin"),
        ((515, 700), "thick"),
        ((333, 1029), "scattered"),
        ((200, 130), "all"),
    ],
)
def test_clamped_lean_output_is_bit_identical_to_clamping_afterwards(monkeypatch, size, kind):
    model = build_tiny_mematte(seed=1).eval()
    _perturb_batchnorm_(model)
    if kind == "ring":
        batch = _ring_batch(2, *size, seed=sum(size))
    else:
        gen = torch.Generator().manual_seed(sum(size))
        batch = {
            "image": torch.rand(2, 3, *size, generator=gen),
            "trimap": torch.cat([_band_trimap(kind, *size, gen), _band_trimap("thin", *size, gen)]),
        }
    monkeypatch.setattr(lean_blocks, "DECODER_BLOCK", 32)  # more boxes, more box borders
    with torch.inference_mode():
        plain = force_known(model(batch)["phas"], batch["trimap"])
        clamped = model(batch, clamp_known=True)["phas"]
        reference = _reference_copy(model)(batch, clamp_known=True)["phas"]
    assert torch.equal(clamped, plain)
    torch.testing.assert_close(clamped, reference, atol=ATOL, rtol=0)


def test_a_decoder_pixel_does_not_depend_on_the_boxes_it_is_computed_in(monkeypatch):
    """Every pixel gets its whole-map value bit for bit, whatever the region, the blocks and the
    box sizes; uncomputed parts of the held maps are never read (they are NaN here)."""
    model = build_tiny_mematte(seed=2).eval()
    _perturb_batchnorm_(model, seed=2)
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, TINY_DIM, 9, 10, generator=gen)
    images = torch.randn(2, 4, 144, 160, generator=gen)
    images[:, 3:] = _band_trimap("thick", 144, 160, gen)
    empty = lean_decoder._TorchStages.empty
    monkeypatch.setattr(
        lean_decoder._TorchStages,
        "empty",
        staticmethod(lambda like, shape: empty(like, shape).fill_(math.nan)),
    )
    with torch.no_grad():
        whole = model.decoder(features, images)["phas"]
        for block, rows in [(16, 24), (8, 5), (32, 128)]:
            monkeypatch.setattr(lean_blocks, "DECODER_BLOCK", block)
            monkeypatch.setattr(lean_blocks, "DECODER_BOX_ROWS", rows)
            for region in [((0, 144), (0, 160)), ((17, 70), (3, 141)), ((64, 144), (96, 160))]:
                part = model.decoder(features, images, region=region, clamp_known=True)["phas"]
                expected = force_known(crop(whole, region), crop(images[:, 3:], region))
                assert torch.equal(part, expected), (block, rows, region)


def test_clamped_decoding_computes_only_the_blocks_with_unknown_pixels(monkeypatch):
    model = build_tiny_mematte().eval()
    plans = []
    original = lean_blocks.plan_decoder
    monkeypatch.setattr(
        lean_decoder, "plan_decoder", lambda *args: plans.append(original(*args)) or plans[-1]
    )
    convs = []
    conv = lean_decoder.valid_conv
    monkeypatch.setattr(lean_decoder, "valid_conv", lambda *args: convs.append(1) or conv(*args))
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, TINY_DIM, 40, 40, generator=gen)
    images = torch.randn(1, 4, 640, 640, generator=gen)
    images[:, 3] = 1.0
    images[:, 3, 100:103, 70:300] = 0.5  # a thin band across 4 blocks of 64 px of the region
    images[:, 3, 400:600, 600:610] = 0.5  # and one outside the region
    images[:, 3, 500, 64 + 130] = 0.25  # a lone unknown pixel
    region = ((64, 576), (64, 576))
    with torch.no_grad():
        model.decoder(features, images, region=region, clamp_known=True)
        (plan,) = plans
        # block grid of the region: which 64 px blocks hold an unknown pixel
        unknown = unknown_pixels(crop(images[:, 3:], region))[0, 0]
        blocks = unknown.view(8, 64, 8, 64).any(dim=3).any(dim=1)
        computed = torch.zeros(8, 8, dtype=torch.bool)
        covered = torch.zeros_like(unknown)
        for (y0, y1), (x0, x1) in plan.head:
            covered[y0 - 64 : y1 - 64, x0 - 64 : x1 - 64] = True
            computed[
                (y0 - 64) // 64 : -(-(y1 - 64) // 64), (x0 - 64) // 64 : -(-(x1 - 64) // 64)
            ] = True
        assert covered[unknown].all()  # every unknown pixel is computed
        assert torch.equal(computed, blocks)  # in the blocks that hold one, and only there
        assert blocks.sum() == 5
        plans.clear(), convs.clear()
        images[:, 3, 64:576, 64:576] = 0.0  # nothing left to compute in the region
        out = model.decoder(features, images, region=region, clamp_known=True)["phas"]
    assert plans[0].head == [] and not convs and torch.equal(out, torch.zeros(1, 1, 512, 512))


def test_uint8_inputs_equal_their_float_reading():
    model = build_tiny_mematte().eval()
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 100, 70), generator=gen, dtype=torch.uint8)
    trimap = torch.tensor([0, 128, 255], dtype=torch.uint8)[
        torch.randint(0, 3, (1, 1, 100, 70), generator=gen)
    ]
    as_float = {"image": image.float() / 255, "trimap": trimap.float() / 255}
    as_uint8 = {"image": image, "trimap": trimap}
    for lean in (model, _reference_copy(model)):
        with torch.inference_mode():
            expected = lean(as_float, clamp_known=True)["phas"]
            assert torch.equal(lean(as_uint8, clamp_known=True)["phas"], expected)


def test_fused_linear_equals_linear_and_gelu_and_follows_weight_updates():
    gen = torch.Generator().manual_seed(0)
    layer, gelu = nn.Linear(24, 40), nn.GELU()
    x = torch.randn(37, 24, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(fused_linear(x, layer, gelu), gelu(layer(x)), atol=1e-6, rtol=0)
        torch.testing.assert_close(fused_linear(x, layer), layer(x), atol=1e-6, rtol=0)
        layer.weight.mul_(2)  # the weight is read at each call
        torch.testing.assert_close(fused_linear(x, layer), layer(x), atol=1e-6, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # outside float32: F.linear
            assert fused_linear(x, layer).dtype == torch.bfloat16


@pytest.mark.parametrize(("rows", "cols"), [(8, 8), (7, 10), (3, 2), (12, 5)])
def test_windows_are_added_back_in_token_order(rows, cols):
    """_add_windows puts the windows of a zero-padded grid back in token order, added to x, also
    where the last window row or column is partial."""
    from modeling.backbone.attention import window_partition, window_unpartition

    gen = torch.Generator().manual_seed(rows * cols)
    x = torch.randn(2, rows, cols, 3, generator=gen)
    windows, pad_hw = window_partition(torch.randn(2, rows, cols, 3, generator=gen), 4)
    expected = x + window_unpartition(windows, 4, pad_hw, (rows, cols))
    out = lean_backbone._add_windows(torch.empty_like(x), x, windows, 4)
    assert torch.equal(out, expected)
