"""Behaviour of the model on a tiny configuration (no reference data needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeling.backbone.attention import Attention, window_partition, window_unpartition
from modeling.backbone.vit import route_tokens
from modeling.criterion.matting_criterion import MattingCriterion
from modeling.lean import to_reference
from modeling.meta_arch.mematte import DECODER_OVERLAP, DECODER_PATCH
from tests.helpers import TINY_DIM, build_tiny_mematte, make_batch, randomize_, tiny_vit


def test_window_partition_round_trip():
    x = torch.randn(2, 11, 9, 8)
    windows, pad_hw = window_partition(x, 4)
    assert windows.shape == (2 * 3 * 3, 4, 4, 8)
    assert pad_hw == (12, 12)
    assert torch.equal(window_unpartition(windows, 4, pad_hw, (11, 9)), x)


def _dense_rel_pos_attention(attn, x):
    """Independent oracle: explicit logits with the rel-pos bias of every (query, key) pair."""
    B, H, W, C = x.shape
    nh, d = attn.num_heads, C // attn.num_heads
    # [B, N, 3C] -> [3, B, heads, N, d]
    q, k, v = attn.qkv(x.reshape(B, H * W, C)).reshape(B, H * W, 3, nh, d).permute(2, 0, 3, 1, 4)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # [B, heads, N, N]
    qh = q.reshape(B, nh, H, W, d)
    for i in range(H):
        for j in range(W):
            for m in range(H):
                for n in range(W):
                    # table rows: offset + (size - 1), as in MViTv2 / ViTDet
                    bias = qh[:, :, i, j] @ attn.rel_pos_h[i - m + H - 1]
                    bias = bias + qh[:, :, i, j] @ attn.rel_pos_w[j - n + W - 1]
                    logits[:, :, i * W + j, m * W + n] += bias
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, H, W, C)
    return attn.proj(out)


def test_rel_pos_attention_matches_explicit_bias():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=2, use_rel_pos=True, input_size=(6, 5))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
        x = torch.randn(3, 6, 5, 32)
        torch.testing.assert_close(attn(x), _dense_rel_pos_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_masked_and_sparse_branches_agree_for_a_fixed_policy():
    vit = randomize_(tiny_vit())
    block = vit.blocks[1]
    assert block.use_efficient_block
    x = torch.randn(2, 6, 5, TINY_DIM)
    policy = (torch.rand(2, 30, 1) < 0.4).float()
    policy[1] = 0.0  # an image with no routed token takes the LTRM only
    with torch.no_grad():
        masked = block.forward_masked(x, policy)
        sparse = block.forward_sparse(x, policy)
    torch.testing.assert_close(masked, sparse, atol=1e-5, rtol=1e-5)


def test_route_tokens_argmax_and_cap_per_image():
    scores = torch.log_softmax(torch.randn(2, 50, 2), dim=-1)
    keep = route_tokens(scores, training=False, max_number_token=None)
    assert torch.equal(keep[..., 0] == 1, scores[..., 0] > scores[..., 1])
    cap = 5
    capped = route_tokens(scores, training=False, max_number_token=cap)
    margin = scores[..., 0] - scores[..., 1]
    for b in range(2):
        expected = min(cap, int(keep[b].sum()))
        assert int(capped[b].sum()) == expected
        chosen = margin[b][capped[b, :, 0] == 1]
        dropped = margin[b][capped[b, :, 0] == 0]
        assert chosen.min() >= dropped.max()


def test_route_tokens_training_is_straight_through():
    scores = torch.log_softmax(torch.randn(1, 20, 2), dim=-1).requires_grad_()
    keep = route_tokens(scores, training=True, max_number_token=3)  # no cap in training
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    keep.sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def test_inference_output_contract(tiny_model):
    tiny_model.eval()
    with torch.no_grad():
        out = tiny_model(make_batch(2, 72, 100), patch_decoder=False)
    assert out["phas"].shape == (2, 1, 72, 100)
    assert out["phas"].min() >= 0 and out["phas"].max() <= 1
    routed = len(tiny_model.backbone.routed_block_indexes)
    assert len(out["router_scores"]) == len(out["keep"]) == routed
    # 72x100 pads to 96x128 (official quirk: both sides grow) -> 6x8 tokens
    assert out["router_scores"][0].shape == (2, 6, 8, 2)
    assert out["keep"][0].shape == (2, 6, 8, 1)


def test_padding_quirk_grows_a_divisible_side(tiny_model):
    images, hw = tiny_model.preprocess(make_batch(1, 512, 700))
    assert hw == (512, 700)
    assert images.shape[-2:] == (544, 704)
    images, _ = tiny_model.preprocess(make_batch(1, 64, 96))
    assert images.shape[-2:] == (64, 96)


@pytest.mark.parametrize("cap", [None, 7])
@pytest.mark.parametrize("lean", [True, False])
def test_batch_equals_single_images(tiny_model, cap, lean):
    if not lean:
        to_reference(tiny_model)
    tiny_model.eval()
    tiny_model.backbone.max_number_token = cap
    batch = make_batch(2, 96, 80, seed=3)
    with torch.no_grad():
        together = tiny_model(batch, patch_decoder=True)
        alone = [
            tiny_model({k: v[i : i + 1] for k, v in batch.items()}, patch_decoder=True)
            for i in range(2)
        ]
    for i in range(2):
        for a, b in zip(together["keep"], alone[i]["keep"]):
            assert torch.equal(a[i : i + 1], b)
        torch.testing.assert_close(together["phas"][i : i + 1], alone[i]["phas"], atol=1e-5, rtol=0)
    if cap is not None:
        assert all(int(k[i].sum()) <= cap for k in together["keep"] for i in range(2))


def _official_style_patch_decoding(decoder, features, images):
    """Independent transcription of the official tiling loops (test oracle)."""
    B, _, H, W = images.shape
    pad_images = F.pad(images, (0, (-W) % DECODER_PATCH, 0, (-H) % DECODER_PATCH))
    fp, fo = DECODER_PATCH // 16, DECODER_OVERLAP // 16
    h, w = features.shape[-2:]
    pad_features = F.pad(features, (0, (-w) % fp, 0, (-h) % fp))
    PH, PW = pad_images.shape[-2:]
    FH, FW = pad_features.shape[-2:]
    out = torch.zeros(B, 1, PH, PW)
    for i in range(PH // DECODER_PATCH):
        for j in range(PW // DECODER_PATCH):
            t, left = i * DECODER_PATCH, j * DECODER_PATCH
            ct = t if t - DECODER_OVERLAP < 0 else t - DECODER_OVERLAP
            cb = t + DECODER_PATCH
            cb = cb if cb + DECODER_OVERLAP > PH else cb + DECODER_OVERLAP
            cl = left if left - DECODER_OVERLAP < 0 else left - DECODER_OVERLAP
            cr = left + DECODER_PATCH
            cr = cr if cr + DECODER_OVERLAP > PW else cr + DECODER_OVERLAP
            ft, fl = i * fp, j * fp
            fct = ft if ft - fo < 0 else ft - fo
            fcb = ft + fp if ft + fp + fo > FH else ft + fp + fo
            fcl = fl if fl - fo < 0 else fl - fo
            fcr = fl + fp if fl + fp + fo > FW else fl + fp + fo
            tile = decoder(pad_features[..., fct:fcb, fcl:fcr], pad_images[..., ct:cb, cl:cr])
            oy = 0 if t - DECODER_OVERLAP < 0 else DECODER_OVERLAP
            ox = 0 if left - DECODER_OVERLAP < 0 else DECODER_OVERLAP
            out[..., t : t + DECODER_PATCH, left : left + DECODER_PATCH] = tile["phas"][
                ..., oy : oy + DECODER_PATCH, ox : ox + DECODER_PATCH
            ]
    return out[..., :H, :W]


@pytest.mark.parametrize("size", [(96, 64), (608, 1056)])
@pytest.mark.parametrize("lean", [True, False])
def test_patch_decoder_matches_official_tiling(tiny_model, size, lean):
    if not lean:
        to_reference(tiny_model)
    tiny_model.eval()
    H, W = size
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(1, 4, H, W, generator=gen)
    features = torch.randn(1, TINY_DIM, H // 16, W // 16, generator=gen)
    with torch.no_grad():
        ours = tiny_model.decode_patches(features, images)
        reference = _official_style_patch_decoding(tiny_model.decoder, features, images)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def _training_step(model, batch):
    model.train()
    out = model(batch)
    losses = {k: v for k, v in out.items() if k.startswith("loss_")}
    return losses, out


def test_every_parameter_gets_a_gradient_and_teacher_stays_frozen():
    model = build_tiny_mematte(with_teacher=True)
    teacher_before = {k: v.clone() for k, v in model.teacher_backbone.state_dict().items()}
    torch.manual_seed(0)
    losses, out = _training_step(model, make_batch(2, 64, 64, train=True))
    assert set(losses) == {
        "loss_unknown_l1",
        "loss_known_l1",
        "loss_pha_laplacian",
        "loss_gradient_penalty",
        "loss_distill",
        "loss_token_ratio",
    }
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if name.startswith("teacher_backbone."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(
        torch.equal(v, model.teacher_backbone.state_dict()[k]) for k, v in teacher_before.items()
    )
    assert len(out["keep_ratios"]) == 2 and out["phas"].shape == (2, 1, 64, 64)


def test_every_gradient_has_the_layout_of_its_parameter():
    """DDP copies gradients into bucket views laid out as the parameters: a gradient with other
    strides (a conv run channels-last on a contiguous weight) makes it warn on every rank."""
    model = build_tiny_mematte(with_teacher=True)
    losses, _ = _training_step(model, make_batch(2, 64, 64, train=True))
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert p.grad.stride() == p.stride(), name


@pytest.mark.parametrize("trimap_value", [0.0, 1.0, 0.5])
def test_training_losses_finite_without_unknown_or_known_pixels(trimap_value):
    model = build_tiny_mematte(with_teacher=True)
    batch = make_batch(2, 64, 64, train=True)
    batch["trimap"] = torch.full_like(batch["trimap"], trimap_value)
    losses, _ = _training_step(model, batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "levels",
    [
        lambda trimap: trimap * 255,  # the official file levels as floats
        lambda trimap: (trimap * 255).round().to(torch.uint8),  # ... as uint8
        lambda trimap: trimap * 255 / 255.0 + (trimap == 0.5) * (128 / 255 - 0.5),  # 128 / 255
    ],
    ids=["float-0-255", "uint8-0-255", "128-over-255"],
)
def test_training_refuses_a_trimap_on_another_scale(tiny_model, levels):
    tiny_model.distill = False
    tiny_model.train()
    batch = make_batch(1, 64, 64, train=True)
    batch["trimap"] = levels(batch["trimap"])
    with pytest.raises(ValueError, match=r"trimap .*0, 0\.5 and 1.*quantize_trimap"):
        tiny_model(batch)


def test_teacher_stays_in_eval_mode():
    model = build_tiny_mematte(with_teacher=True)
    model.train()
    assert model.backbone.training and not model.teacher_backbone.training
    assert not any(m.training for m in model.teacher_backbone.modules())


def test_training_does_not_modify_the_callers_trimap(tiny_model):
    tiny_model.distill = False
    batch = make_batch(1, 64, 64, train=True)
    trimap = batch["trimap"].clone()
    _training_step(tiny_model, batch)
    assert torch.equal(batch["trimap"], trimap)


def test_criterion_is_masked_mean():
    pred = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 1, 4, 4)
    target[..., 0, :2] = 1.0
    unknown = torch.zeros(1, 1, 4, 4)
    unknown[..., 0, :] = 1.0
    losses = MattingCriterion(["unknown_l1_loss", "known_l1_loss"])(pred, target, unknown)
    assert losses["loss_unknown_l1"].item() == pytest.approx(0.5)  # 2 of 4 unknown pixels off by 1
    assert losses["loss_known_l1"].item() == 0.0


def test_criterion_rejects_unknown_loss_names():
    with pytest.raises(ValueError, match="unknown losses"):
        MattingCriterion(["l2_loss"])
