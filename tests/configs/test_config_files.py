"""Every config loads and instantiates; the S/B training recipes equal the official numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler

from data.build import TrainSampler
from data.dim_dataset import DIMTrainDataset
from data.synthetic_dataset import make_synthetic_dataset
from engine.config import LazyConfig, instantiate
from engine.lr_scheduler import WarmupParamScheduler
from engine.optim import freeze_teacher
from evaluation.evaluator import MattingEvaluator
from tests.helpers import CONFIG_B, CONFIG_S, REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs"
TINY_CONFIG = CONFIG_DIR / "tiny" / "MEMatte_tiny_synthetic.py"
# Files with a full training setup (model, optimizer, lr_multiplier, train, dataloader).
TRAINING_CONFIGS = (CONFIG_S, CONFIG_B, TINY_CONFIG)
TRAINING_KEYS = {"model", "optimizer", "lr_multiplier", "train", "dataloader"}

WARMUP_ITERS = 250
# Parameter groups of the official optimizer (distinct lr x weight decay), S and B alike.
OFFICIAL_NUM_GROUPS = 28
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


def _official_and_ours(golden_dir: Path, path: Path, name: str):
    """The official ``{parameter: [lr, weight decay]}`` (in the official model's parameter order)
    and our model (meta device, teacher frozen) with its optimizer from the config."""
    official = json.loads((golden_dir / "optim_groups.json").read_text())[name]
    cfg = LazyConfig.load(path)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    freeze_teacher(model)
    cfg.optimizer.params.model = model
    return official, model, instantiate(cfg.optimizer)


def _official_groups(official: dict[str, list[float]]) -> list[tuple[float, float, list[str]]]:
    """detectron2's grouping, written out: one group per distinct (lr, weight decay), ordered by
    its first parameter, parameters in the model's order (the JSON's key order)."""
    groups: dict[tuple[float, float], list[str]] = {}
    for param, (lr, weight_decay) in official.items():
        groups.setdefault((lr, weight_decay), []).append(param)
    return [(lr, weight_decay, params) for (lr, weight_decay), params in groups.items()]


@pytest.mark.parametrize(("path", "name"), [(CONFIG_S, "S"), (CONFIG_B, "B")])
def test_every_parameter_gets_the_official_lr_and_weight_decay(golden_dir, path, name):
    """Every trainable parameter's lr (layer decay included) and weight decay (the ResBottleneck
    norms keep 0.1) as the official code builds them, in detectron2's groups."""
    official, model, optimizer = _official_and_ours(golden_dir, path, name)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = optimizer.param_groups
    ours = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert ours.keys() == official.keys()  # teacher excluded, every other parameter once
    for param, (lr, weight_decay) in official.items():
        assert ours[param][0] == pytest.approx(lr, rel=1e-12), param
        assert ours[param][1] == weight_decay, param
    ours_groups = [
        (g["lr"], g["weight_decay"], [names[id(p)] for p in g["params"]])
        for g in optimizer.param_groups
    ]
    official_groups = _official_groups(official)
    assert len(ours_groups) == len(official_groups) == OFFICIAL_NUM_GROUPS
    for (lr, wd, params), (official_lr, official_wd, official_params) in zip(
        ours_groups, official_groups, strict=True
    ):
        assert lr == pytest.approx(official_lr, rel=1e-12) and wd == official_wd
        assert params == official_params


@pytest.mark.parametrize(("path", "name"), [(CONFIG_S, "S"), (CONFIG_B, "B")])
def test_an_official_optimizer_state_loads(golden_dir, path, name):
    """An AdamW state laid out as the official run saves it (groups in detectron2's order and
    sizes, parameters numbered in that order) loads, and each moment reaches its parameter."""
    official, model, optimizer = _official_and_ours(golden_dir, path, name)
    by_name = dict(model.named_parameters())
    groups = _official_groups(official)
    saved_params = [param for _, _, params in groups for param in params]
    state = {
        index: {
            "step": torch.tensor(float(index)),  # tells which parameter the entry was saved for
            "exp_avg": torch.zeros(by_name[param].shape, device="meta"),
            "exp_avg_sq": torch.zeros(by_name[param].shape, device="meta"),
        }
        for index, param in enumerate(saved_params)
    }
    defaults = {k: v for k, v in optimizer.defaults.items() if k not in ("lr", "weight_decay")}
    param_groups, start = [], 0
    for lr, weight_decay, params in groups:
        indexes = list(range(start, start + len(params)))
        param_groups.append({**defaults, "lr": lr, "weight_decay": weight_decay, "params": indexes})
        start += len(params)

    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    for index, param in enumerate(saved_params):
        loaded = optimizer.state[by_name[param]]
        assert loaded["step"].item() == index, param
        assert loaded["exp_avg"].shape == by_name[param].shape, param


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
