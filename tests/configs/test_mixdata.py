"""The mixed-data recipe (the authors' AIM-500 model) and pooled training folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from data.dim_dataset import DIMTrainDataset
from data.synthetic_dataset import make_synthetic_dataset
from engine.config import LazyConfig, instantiate
from tests.helpers import REPO_ROOT

MIXDATA = REPO_ROOT / "configs" / "MEMatte_S_topk0.25_1024_mixdata.py"
NUM_FG = (2, 3)


def test_mixed_data_recipe_carries_the_authors_values():
    cfg = LazyConfig.load(str(MIXDATA))
    assert cfg.train.max_iter == int(282700 / 2 / 4 * 10)
    assert cfg.train.checkpointer.period == int(282700 / 2 / 4 * 0.5)
    sched = cfg.lr_multiplier
    assert list(sched.scheduler.milestones) == [int(282700 / 2 / 4 * e) for e in (3, 9)]
    assert list(sched.scheduler["values"]) == [1.0, 0.1, 0.05]  # .values is a method
    assert sched.scheduler.num_updates == cfg.train.max_iter
    assert sched.warmup_length * cfg.train.max_iter == pytest.approx(250)
    assert cfg.optimizer.lr == 5e-4
    assert cfg.model.backbone.topk == 0.25 and cfg.model.distill
    assert cfg.model.backbone.img_size == cfg.model.teacher_backbone.img_size == 1024
    assert cfg.dataloader.train.dataset.crop_size == 1024
    assert cfg.dataloader.train.batch_size == 2
    assert cfg.train.init_checkpoint == "./pretrained/ViTMatte_S_mixdata_1024_with_teacher.pth"
    fg, alpha = cfg.dataloader.train.dataset.fg_dir, cfg.dataloader.train.dataset.alpha_dir
    assert len(fg) == len(alpha) == 3  # Composition-1k, Distinctions-646, AM-2K


@pytest.fixture(scope="module")
def two_training_sets(tmp_path_factory) -> list[Path]:
    """Two synthetic training sets with the same stems; the second with .jpg foregrounds."""
    root = tmp_path_factory.mktemp("mixdata")
    sets = []
    for i, num_fg in enumerate(NUM_FG):
        make_synthetic_dataset(root / f"set{i}", i, num_fg=num_fg, num_bg=4, num_test=1, size=64)
        sets.append(root / f"set{i}" / "train")
    for png in sorted((sets[1] / "fg").glob("*.png")):
        cv2.imwrite(str(png.with_suffix(".jpg")), cv2.imread(str(png)))
        png.unlink()
    return sets


def test_foreground_folders_are_pooled_pairwise(two_training_sets):
    first, second = two_training_sets
    dataset = DIMTrainDataset(
        fg_dir=[first / "fg", second / "fg"],
        alpha_dir=[first / "alpha", second / "alpha"],
        bg_dir=first / "bg",
        crop_size=64,
    )
    assert dataset.num_foregrounds == sum(NUM_FG)
    assert [p.parent for p in dataset.fg_paths] == [first / "fg"] * 2 + [second / "fg"] * 3
    assert [p.parent for p in dataset.alpha_paths] == [first / "alpha"] * 2 + [second / "alpha"] * 3
    assert {p.suffix for p in dataset.fg_paths[2:]} == {".jpg"}
    assert all(fg.stem == alpha.stem for fg, alpha in zip(dataset.fg_paths, dataset.alpha_paths))
    assert dataset[3]["image"].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="2 foreground folders but 1 alpha"):
        DIMTrainDataset(
            fg_dir=[first / "fg", second / "fg"], alpha_dir=[first / "alpha"], bg_dir=first / "bg"
        )
    with pytest.raises(FileNotFoundError, match="missing"):
        DIMTrainDataset(
            fg_dir=[first / "fg", first / "missing"],
            alpha_dir=[first / "alpha", second / "alpha"],
            bg_dir=first / "bg",
        )


def test_the_recipe_builds_its_loader_from_folder_lists(two_training_sets):
    first, second = two_training_sets
    overrides = [
        f"dataloader.train.dataset.fg_dir=['{first / 'fg'}', '{second / 'fg'}']",
        f"dataloader.train.dataset.alpha_dir=['{first / 'alpha'}', '{second / 'alpha'}']",
        f"dataloader.train.dataset.bg_dir={first / 'bg'}",
        "dataloader.train.num_workers=0",
    ]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(MIXDATA)), overrides)
    loader = instantiate(cfg.dataloader.train)
    assert loader.dataset.num_foregrounds == sum(NUM_FG)
    assert loader.dataset.crop_size == 1024
