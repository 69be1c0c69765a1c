"""ViTMatte configs: the official key set, training without routing, inference and evaluation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import inference
from data.synthetic_dataset import make_synthetic_dataset
from engine.config import LazyConfig, instantiate
from evaluation.evaluator import MattingEvaluator
from tests.helpers import REPO_ROOT, TINY_CONFIG, make_batch, official_vitmatte_shapes, randomize_

VITMATTE_S = REPO_ROOT / "configs" / "ViTMatte_S_Com.py"
VITMATTE_B = REPO_ROOT / "configs" / "ViTMatte_B_Com.py"
# The tiny config with routing off: a tiny ViTMatte.
TINY_VITMATTE = [
    "model.backbone.use_routing=False",
    "model.teacher_backbone=None",
    "model.distill=False",
]
ALPHA_LEVELS = 255


@pytest.mark.parametrize(("config", "name"), [(VITMATTE_S, "S"), (VITMATTE_B, "B")])
def test_vitmatte_configs_hold_exactly_the_official_keys(golden_dir, config, name):
    with torch.device("meta"):
        model = instantiate(LazyConfig.load(str(config)).model)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_vitmatte_shapes(golden_dir / f"keys_{name}.txt")


def test_vitmatte_recipes_follow_the_vitmatte_repository():
    s, b = LazyConfig.load(str(VITMATTE_S)), LazyConfig.load(str(VITMATTE_B))
    # int(43100 / 16 / 2 * 100), int(43100 / 16 / 2 * 10), milestones at epochs 30 and 90
    assert (s.train.max_iter, s.train.checkpointer.period) == (134687, 13468)
    assert list(s.lr_multiplier.scheduler.milestones) == [40406, 121218]
    # int(43100 / 10 / 2 * 100), int(43100 / 10 / 2 * 10)
    assert (b.train.max_iter, b.train.checkpointer.period) == (215500, 21550)
    assert list(b.lr_multiplier.scheduler.milestones) == [64650, 193950]
    assert (s.dataloader.train.batch_size, b.dataloader.train.batch_size) == (16, 10)
    for cfg in (s, b):
        assert not cfg.model.backbone.use_routing and not cfg.model.distill
        assert cfg.model.teacher_backbone is None
        assert cfg.lr_multiplier.warmup_length * cfg.train.max_iter == pytest.approx(250)
    assert (b.model.backbone.embed_dim, b.model.backbone.num_heads) == (768, 12)


@pytest.mark.slow
def test_a_model_without_routed_blocks_trains():
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(TINY_CONFIG)), TINY_VITMATTE)
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    assert not model.backbone.routers and not model.backbone.routed_block_indexes
    out = model(make_batch(2, 64, 64, train=True))
    losses = {k: v for k, v in out.items() if k.startswith("loss_")}
    assert "loss_token_ratio" not in losses and "loss_distill" not in losses
    assert out["keep_ratios"] == []
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
def test_vitmatte_s_runs_through_inference_and_the_evaluator(tmp_path):
    make_synthetic_dataset(tmp_path / "data", 0, num_fg=1, num_bg=1, num_test=2, size=80)
    test_set = tmp_path / "data" / "test"
    cfg = LazyConfig.load(str(VITMATTE_S))
    torch.manual_seed(0)
    model = randomize_(instantiate(cfg.model)).eval()
    checkpoint = tmp_path / "ViTMatte_S.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    out = tmp_path / "pred"
    argv = ["--config-file", str(VITMATTE_S), "--checkpoint", str(checkpoint)]
    argv += ["--data-dir", str(test_set), "--output-dir", str(out), "--device", "cpu"]
    assert inference.main([*argv, "--workers", "0"]) == 0
    for image_path in sorted((test_set / "merged").iterdir()):
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)[..., ::-1]  # BGR -> RGB
        trimap = cv2.imread(str(test_set / "trimaps" / f"{image_path.stem}.png"), 0)
        batch = {
            "image": torch.from_numpy(image.copy()).permute(2, 0, 1)[None] / 255.0,
            "trimap": torch.from_numpy(trimap)[None, None] / 255.0,
        }
        with torch.inference_mode():
            alpha = model(batch)["phas"][0, 0].numpy()
        expected = np.floor(alpha.clip(0, 1) * np.float32(ALPHA_LEVELS)).astype(np.uint8)
        expected[trimap == 0], expected[trimap == ALPHA_LEVELS] = 0, ALPHA_LEVELS
        assert np.array_equal(cv2.imread(str(out / f"{image_path.stem}.png"), 0), expected)
    results = MattingEvaluator(test_set)(model)
    assert set(results) == {"eval/sad", "eval/mse", "eval/grad", "eval/conn"}


def test_the_benchmark_vitmatte_variant_is_the_vitmatte_config():
    from tools import benchmark

    tiny = ["model.backbone.embed_dim=64", "model.backbone.num_heads=2", "model.backbone.depth=4"]
    model = benchmark.build_model("S", "vitmatte", tiny, seed=0)
    assert benchmark.CONFIGS["S", "vitmatte"] == str(VITMATTE_S.relative_to(REPO_ROOT))
    assert model.teacher_backbone is None and not model.backbone.routers
    assert all(block.attn.use_rel_pos for block in model.backbone.blocks)
