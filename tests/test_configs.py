"""Every config loads and instantiates; the S/B training recipes equal the official numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_B, CONFIG_S, REPO_ROOT
from fvcore.common.param_scheduler import MultiStepParamScheduler

from data.build import TrainSampler
from data.dim_dataset import DIMTrainDataset
from engine.config import LazyConfig, instantiate
from engine.lr_scheduler import WarmupParamScheduler
from engine.optim import freeze_teacher
from evaluation.evaluator import MattingEvaluator
from tools.make_synthetic_dataset import make_synthetic_dataset

CONFIG_DIR = REPO_ROOT / "configs"
TINY_CONFIG = CONFIG_DIR / "tiny" / "MEMatte_tiny_synthetic.py"
# Files with a full training setup (model, optimizer, lr_multiplier, train, dataloader).
TRAINING_CONFIGS = (CONFIG_S, CONFIG_B, TINY_CONFIG)
TRAINING_KEYS = {"model", "optimizer", "lr_multiplier", "train", "dataloader"}

WARMUP_ITERS = 250
# Official numbers, as the official configs compute them (linyiheng123/MEMatte
# configs/MEMatte_{S,B}_topk0.25_win_global_long.py): int(43100 / 16 / 2 * 30) = 40406, ...
OFFICIAL = {
    CONFIG_S: dict(
        max_iter=40406,
        milestones=[8081, 35018],
        period=2693,
        batch_size=16,
        num_workers=2,
        init_checkpoint="./pretrained/ViTMatte_S_Com_with_teacher.pth",
        output_dir="./output_of_train/MEMatte_S_topk0.25_win_global_long",
    ),
    CONFIG_B: dict(
        max_iter=64650,
        milestones=[32325, 56030],
        period=4310,
        batch_size=10,
        num_workers=4,
        init_checkpoint="./pretrained/ViTMatte_B_Com_with_teacher.pth",
        output_dir="./output_of_train/ViTMatte_B_topk0.25_win_global_long",
    ),
}


def _all_config_files() -> list[Path]:
    return sorted(CONFIG_DIR.rglob("*.py"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("configs") / "synthetic"
    make_synthetic_dataset(root, 0, num_fg=2, num_bg=16, num_test=1, size=64)  # 16: S batch
    return root


def _point_data_at(cfg, root: Path) -> None:
    dataset = cfg.dataloader.train.dataset
    dataset.fg_dir = str(root / "train" / "fg")
    dataset.alpha_dir = str(root / "train" / "alpha")
    dataset.bg_dir = str(root / "train" / "bg")
    if cfg.dataloader.evaluator is not None:
        cfg.dataloader.evaluator.data_dir = str(root / "test")


@pytest.mark.parametrize("path", _all_config_files(), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_file_loads(path):
    cfg = LazyConfig.load(path)
    assert len(cfg) > 0
    if path in TRAINING_CONFIGS:
        assert set(cfg) >= TRAINING_KEYS


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # B: 4 workers, 2 cores
@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.stem)
def test_training_config_instantiates(path, synthetic):
    cfg = LazyConfig.load(path)
    _point_data_at(cfg, synthetic)
    # The S/B models are big: build them without memory (names and shapes only).
    device = "cpu" if path == TINY_CONFIG else "meta"
    with torch.device(device):
        model = instantiate(cfg.model)
    assert freeze_teacher(model) > 0
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert isinstance(instantiate(cfg.lr_multiplier), WarmupParamScheduler)
    loader = instantiate(cfg.dataloader.train)
    assert isinstance(loader.dataset, DIMTrainDataset)
    assert isinstance(loader.sampler, TrainSampler)
    assert loader.batch_size == cfg.dataloader.train.batch_size
    assert loader.num_workers == cfg.dataloader.train.num_workers
    assert loader.dataset.seed == loader.sampler.seed == cfg.train.seed
    evaluator = instantiate(cfg.dataloader.evaluator)
    assert evaluator is None or isinstance(evaluator, MattingEvaluator)


@pytest.mark.parametrize("path", [CONFIG_S, CONFIG_B], ids=lambda p: p.stem)
def test_official_training_recipe(path):
    cfg = LazyConfig.load(path)
    want = OFFICIAL[path]
    train = cfg.train
    assert train.max_iter == want["max_iter"]
    assert train.checkpointer.period == want["period"]
    assert train.init_checkpoint == want["init_checkpoint"]
    assert train.output_dir == want["output_dir"]
    assert train.amp.enabled and train.amp.precision == "fp16"  # official: always fp16 autocast
    assert train.device == "cuda"
    assert set(train.ddp) == {"broadcast_buffers", "find_unused_parameters", "fp16_compression"}
    assert cfg.dataloader.train.batch_size == want["batch_size"]
    assert cfg.dataloader.train.num_workers == want["num_workers"]
    assert cfg.dataloader.train.dataset.crop_size == 512
    assert cfg.dataloader.evaluator is None  # the official recipe does not evaluate in training

    sched = cfg.lr_multiplier
    assert list(sched.scheduler["values"]) == [1.0, 0.1, 0.05]  # .values is a method
    assert list(sched.scheduler.milestones) == want["milestones"]
    assert sched.scheduler.num_updates == want["max_iter"]
    assert sched.warmup_length * want["max_iter"] == pytest.approx(WARMUP_ITERS)
    assert sched.warmup_factor == 0.001

    opt = cfg.optimizer
    assert opt._target_ == "torch.optim.AdamW"
    assert opt.lr == 5e-4
    assert list(opt.betas) == [0.9, 0.999]
    assert opt.weight_decay == 0.1
    assert opt.params.weight_decay_norm == 0.0
    assert opt.params.overrides == {"pos_embed": {"weight_decay": 0.0}}
    assert opt.params.lr_factor_func.lr_decay_rate == 0.65
    assert opt.params.lr_factor_func.num_layers == 12


@pytest.mark.parametrize("path", [CONFIG_S, CONFIG_B], ids=lambda p: p.stem)
def test_lr_multiplier_curve(path):
    cfg = LazyConfig.load(path)
    max_iter = cfg.train.max_iter
    first, second = cfg.lr_multiplier.scheduler.milestones
    multiplier = instantiate(cfg.lr_multiplier)
    assert isinstance(multiplier._schedulers[1], MultiStepParamScheduler)

    def at(iteration: int) -> float:
        return multiplier(iteration / max_iter)

    assert at(0) == pytest.approx(0.001)
    assert at(WARMUP_ITERS // 2) == pytest.approx(0.001 + 0.999 * 0.5, rel=1e-2)
    assert at(WARMUP_ITERS) == pytest.approx(1.0)
    assert at(first - 1) == pytest.approx(1.0)
    assert at(first + 1) == pytest.approx(0.1)
    assert at(second + 1) == pytest.approx(0.05)
    assert at(max_iter - 1) == pytest.approx(0.05)


@pytest.mark.parametrize(("path", "name"), [(CONFIG_S, "S"), (CONFIG_B, "B")])
def test_param_group_lrs_equal_the_official_optimizer(golden_dir, path, name):
    """Every trainable parameter's lr (layer decay included) as the official code builds it."""
    official = json.loads((golden_dir / "optim_groups.json").read_text())[name]
    cfg = LazyConfig.load(path)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    freeze_teacher(model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert ours.keys() == official.keys()  # teacher excluded, every other parameter once
    for param, (lr, _weight_decay) in official.items():
        assert ours[param] == pytest.approx(lr, rel=1e-12), param


def test_tiny_config_trains_on_cpu_without_distillation():
    cfg = LazyConfig.load(TINY_CONFIG)
    assert cfg.train.device == "cpu" and not cfg.train.amp.enabled
    assert not cfg.model.distill
    assert cfg.dataloader.train.dataset.crop_size == cfg.model.backbone.img_size
    assert cfg.optimizer.params.lr_factor_func.num_layers == cfg.model.backbone.depth
    sched = cfg.lr_multiplier
    assert sched.scheduler.num_updates == cfg.train.max_iter
    assert max(sched.scheduler.milestones) < cfg.train.max_iter
    assert 0 < sched.warmup_length < 1
