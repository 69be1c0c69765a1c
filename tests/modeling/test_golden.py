"""Faithfulness to the official code: key manifests and reference outputs in ../shared/golden."""

from __future__ import annotations

import pytest
import torch

from engine.config import LazyConfig, instantiate
from modeling.backbone.attention import softmax_with_policy
from modeling.criterion.matting_criterion import LOSSES
from tests.helpers import CONFIG_B, CONFIG_S, SMALL_MODEL_OVERRIDES, read_manifest

# Suggested tolerances of the reference README (float32 vs float64 of the official code).
PHAS_ATOL = 5e-5
FEATURES_ATOL = 1e-4
RELATIVE_TOL = 1e-5


def _state_dict_shapes(config, overrides=()):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(config)), list(overrides))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("config", "manifest", "overrides"),
    [
        (CONFIG_S, "keys_S.txt", []),
        (CONFIG_B, "keys_B.txt", []),
        (CONFIG_S, "keys_S_inference.txt", ["model.teacher_backbone=None"]),
        (CONFIG_B, "keys_B_inference.txt", ["model.teacher_backbone=None"]),
    ],
)
def test_state_dict_matches_official_manifest(golden_dir, config, manifest, overrides):
    assert _state_dict_shapes(config, overrides) == read_manifest(golden_dir / manifest)


@pytest.fixture(scope="module")
def reference_model():
    from tests.helpers import GOLDEN_DIR

    if not GOLDEN_DIR.is_dir():
        pytest.skip("../shared/golden is not available")
    golden = torch.load(GOLDEN_DIR / "golden_eval.pt", weights_only=False)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(CONFIG_S)), SMALL_MODEL_OVERRIDES)
    model = instantiate(cfg.model)
    model.load_state_dict(golden["state_dict"], strict=True)
    return model.eval(), golden


def _inputs(case):
    image = case["input_image_u8"].to(torch.float32) / 255
    trimap = torch.tensor([0.0, 0.5, 1.0])[case["input_trimap_code"].long()]
    return {"image": image, "trimap": trimap}


def _assert_relative(actual, expected, tol=RELATIVE_TOL):
    scale = expected.abs().max().clamp(min=1e-12)
    assert ((actual - expected).abs().max() / scale).item() < tol


def test_eval_cases_match_official_outputs(reference_model):
    model, golden = reference_model
    captured = {}
    handle = model.backbone.register_forward_hook(
        lambda module, args, out: captured.update(features=out.features)
    )
    for case in golden["cases"]:
        model.backbone.max_number_token = case["max_number_token"]
        with torch.no_grad():
            out = model(_inputs(case), patch_decoder=case["patch_decoder"])
        for ours, theirs in zip(out["keep"], case["out_hard_keep_decision"], strict=True):
            assert torch.equal(ours, theirs), case["name"]
        for ours, theirs in zip(out["router_scores"], case["out_pred_prob"], strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
        torch.testing.assert_close(out["phas"], case["phas"], atol=PHAS_ATOL, rtol=0)
        torch.testing.assert_close(
            captured["features"], case["features"], atol=FEATURES_ATOL, rtol=0
        )
    handle.remove()


def test_eval_intermediates_match_per_block(reference_model, golden_dir):
    model, golden = reference_model
    inter = torch.load(golden_dir / "golden_eval_intermediates.pt", weights_only=False)
    case = next(c for c in golden["cases"] if c["name"] == inter["case"])
    model.backbone.max_number_token = case["max_number_token"]
    images, _ = model.preprocess(_inputs(case))
    _assert_relative(images, inter["preprocessed_images"])
    captured = {"blocks": [], "ltrm": {}}
    hooks = [
        blk.register_forward_hook(lambda m, a, o: captured["blocks"].append(o))
        for blk in model.backbone.blocks
    ]
    for i in inter["efficient_block_out"]:
        hooks.append(
            model.backbone.blocks[i].efficient_block.register_forward_hook(
                lambda m, a, o, i=i: captured["ltrm"].__setitem__(i, o.clone())
            )
        )
    with torch.no_grad():
        patches = model.backbone.patch_embed(images)
        model.backbone(images)
    for h in hooks:
        h.remove()
    _assert_relative(patches, inter["patch_embed_out"])
    for ours, theirs in zip(captured["blocks"], inter["block_out"], strict=True):
        _assert_relative(ours, theirs)
    for i, theirs in inter["efficient_block_out"].items():
        _assert_relative(captured["ltrm"][i], theirs)
    dec = inter["decoder_only"]
    with torch.no_grad():
        phas = model.decoder(dec["features"], dec["images"])["phas"]
    torch.testing.assert_close(phas, dec["phas"], atol=PHAS_ATOL, rtol=0)


def test_train_mode_block_attention_router_outputs(reference_model, golden_dir):
    model, _ = reference_model
    ref = torch.load(golden_dir / "golden_train.pt", weights_only=False)
    blk_ref = ref["block"]
    block = model.backbone.blocks[blk_ref["block_index"]]
    x, policy = blk_ref["x"], blk_ref["policy"]
    try:
        model.train()
        with torch.no_grad():
            _assert_relative(block(x, policy), blk_ref["train_out"])
            _assert_relative(block.efficient_block(x), blk_ref["train_efficient_block_out"])
            _assert_relative(
                block.attn(block.norm1(x), policy), blk_ref["train_attn_with_policy_out"]
            )
            _assert_relative(
                model.backbone.routers[0](x.reshape(2, -1, x.shape[-1])), blk_ref["router0_out"]
            )
    finally:
        model.eval()
    with torch.no_grad():
        _assert_relative(block(x[:1], policy[:1]), blk_ref["eval_out_batch0"])
        _assert_relative(
            block(x[:1], torch.zeros_like(policy[:1])), blk_ref["eval_out_batch0_no_token_selected"]
        )
        _assert_relative(model.backbone.blocks[0](x[:1]), blk_ref["eval_block0_window_out_batch0"])
        _assert_relative(model.backbone.blocks[1](x[:1]), blk_ref["eval_block1_window_out_batch0"])

    soft = ref["softmax_with_policy"]
    _assert_relative(
        softmax_with_policy(soft["attn_logits"], soft["policy"], soft["eps"]), soft["out"]
    )

    att = ref["attention"]
    attn = model.backbone.blocks[att["block_index"]].attn
    with torch.no_grad():
        _assert_relative(attn(att["x"], att["policy"]), att["out_with_policy"])
        _assert_relative(attn(att["x"]), att["out_no_policy"])
        window_attn = model.backbone.blocks[att["relpos_block_index"]].attn
        _assert_relative(window_attn(att["x_window"]), att["out_window_relpos"])


def test_criterion_matches_official_values(reference_model, golden_dir):
    model, _ = reference_model
    crit = torch.load(golden_dir / "golden_train.pt", weights_only=False)["criterion"]
    losses = model.criterion(crit["pred_phas"], crit["target_phas"], crit["sample_map"])
    for official_name, value in crit["losses"].items():
        ours = losses[LOSSES[official_name][0]].item()
        assert ours == pytest.approx(value, rel=RELATIVE_TOL), official_name
