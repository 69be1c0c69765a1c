"""Tests for the training engine on a toy model: trainer, hooks, writers, lr schedule, optimizer
groups, checkpoints and resume (CPU, a few seconds)."""

import copy
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from timm.layers import LayerNorm2d as TimmLayerNorm2d
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

import engine.checkpoint
import engine.events
from data.build import TrainSampler
from data.seeding import SampleKey
from engine.checkpoint import Checkpointer
from engine.config import LazyConfig, instantiate
from engine.defaults import schedule_in_iterations
from engine.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardWriter,
    get_event_storage,
)
from engine.hooks import (
    EvalHook,
    ImageLogger,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
)
from engine.lr_scheduler import LRMultiplier, WarmupParamScheduler
from engine.optim import freeze_teacher, get_default_optimizer_params, get_vit_lr_decay_rate
from engine.train_loop import AMPTrainer, HookBase, SimpleTrainer

IMG = 8  # toy image side
NUM_SAMPLES = 4
BATCH = 2
BATCHES_PER_EPOCH = NUM_SAMPLES // BATCH
NUM_ROUTERS = 2
ROUTED_BLOCKS = (1, 3)  # backbone block indexes named in the token-ratio scalars
NOISE = 0.01
LR = 1e-2

WARMUP_FACTOR = 0.001
VIT_DEPTH = 12
LR_DECAY = 0.65


class LayerNorm2d(nn.Module):
    """Channels-first LayerNorm as a plain module, like detectron2's ``LayerNorm`` (not an
    ``nn.LayerNorm``: the official optimizer does not treat it as a norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        std = (x - mean).pow(2).mean(1, keepdim=True).add(1e-6).sqrt()
        return self.weight[:, None, None] * (x - mean) / std + self.bias[:, None, None]


class ToyMatting(nn.Module):
    """Stand-in for MEMatte with the same train-mode contract: ``loss_*`` scalars, ``phas``
    and ``keep_ratios`` (one per router)."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(4, hidden, 1)
        self.routers = nn.ModuleList(nn.Conv2d(hidden, 1, 1) for _ in range(NUM_ROUTERS))
        self.norm = LayerNorm2d(hidden)
        self.head = nn.Conv2d(hidden, 1, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, object]:
        x = torch.cat([batch["image"], batch["trimap"]], dim=1)
        features = torch.relu(self.norm(self.backbone(x)))
        if self.training:  # noise from torch's global generator, like the routers' gumbel noise
            features = features + NOISE * torch.randn_like(features)
        phas = torch.sigmoid(self.head(features))
        keep_ratios = [torch.sigmoid(router(features)).mean() for router in self.routers]
        return {
            "loss_l1": (phas - batch["alpha"]).abs().mean(),
            "loss_mse": (phas - batch["alpha"]).pow(2).mean(),
            "phas": phas,
            "keep_ratios": keep_ratios,
        }


class ToyDataset(Dataset):
    """Fixed samples whose alpha is a smooth function of the image (learnable by the toy)."""

    def __init__(self, num_samples: int = NUM_SAMPLES, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.rand(num_samples, 3, IMG, IMG, generator=gen)
        self.alphas = self.images.mean(dim=1, keepdim=True).pow(2)
        self.trimaps = torch.full_like(self.alphas, 0.5)  # all unknown
        self.loaded: list[SampleKey | int] = []  # keys loaded, in order (in-process loading)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: SampleKey | int) -> dict[str, torch.Tensor]:
        index = key.index if isinstance(key, SampleKey) else key
        self.loaded.append(key)
        image = self.images[index]
        return {
            "image": image,
            "alpha": self.alphas[index],
            "trimap": self.trimaps[index],
            "fg": image,
            "bg": torch.zeros_like(image),
        }


class EpochShuffleSampler(Sampler[int]):
    """Permutation that depends only on the epoch (like DistributedSampler); records set_epoch."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.set_epoch_calls: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.set_epoch_calls.append(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=gen).tolist())

    def __len__(self) -> int:
        return self.size


def make_loader(dataset: Dataset | None = None) -> DataLoader:
    dataset = ToyDataset() if dataset is None else dataset
    return DataLoader(dataset, batch_size=BATCH, sampler=EpochShuffleSampler(len(dataset)))


def make_model(seed: int = 0) -> ToyMatting:
    torch.manual_seed(seed)
    return ToyMatting()


def make_trainer(model: nn.Module, loader: DataLoader | None = None) -> SimpleTrainer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    loader = make_loader() if loader is None else loader
    return SimpleTrainer(model, loader, optimizer, routed_block_indexes=ROUTED_BLOCKS)


def full_loss(model: nn.Module) -> float:
    dataset = ToyDataset()
    batch = {
        name: torch.stack([dataset[i][name] for i in range(len(dataset))])
        for name in ("image", "alpha", "trimap")
    }
    with torch.no_grad():
        outputs = model(batch)
    return float(outputs["loss_l1"] + outputs["loss_mse"])


# ---------------------------------------------------------------- trainer


@pytest.mark.slow
def test_simple_trainer_lowers_loss() -> None:
    model = make_model()
    before = full_loss(model)
    trainer = make_trainer(model)
    trainer.train(0, 30)
    assert full_loss(model) < 0.5 * before
    assert trainer.iter == 30
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 30 and history[-1][1] == 29


def test_amp_trainer_bf16_on_cpu() -> None:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    trainer = AMPTrainer(model, make_loader(), optimizer, ROUTED_BLOCKS, precision="bf16")
    trainer.train(0, 3)
    assert math.isfinite(trainer.storage.history("total_loss").latest())
    assert "grad_scaler" not in trainer.state_dict()


def test_amp_trainer_rejects_fp16_on_cpu_and_stray_scaler() -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA model"):
        AMPTrainer(model, make_loader(), optimizer, precision="fp16")
    with pytest.raises(ValueError, match="only used with fp16"):
        AMPTrainer(model, make_loader(), optimizer, precision="bf16", grad_scaler=object())
    with pytest.raises(ValueError, match="precision must be one of"):
        AMPTrainer(model, make_loader(), optimizer, precision="int8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_trainer_fp16_on_cuda() -> None:
    model = make_model().to("cuda")
    loader = [{k: v.to("cuda") for k, v in batch.items()} for batch in make_loader()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    trainer = AMPTrainer(model, loader, optimizer, ROUTED_BLOCKS)
    trainer.train(0, 3)
    assert "grad_scaler" in trainer.state_dict()
    assert math.isfinite(trainer.storage.history("total_loss").latest())


def test_infinite_loader_calls_set_epoch() -> None:
    loader = make_loader()
    trainer = make_trainer(make_model(), loader)
    trainer.train(0, 2 * BATCHES_PER_EPOCH + 1)
    assert loader.sampler.set_epoch_calls == [0, 1, 2]
    assert trainer.state_dict()["data"] == {"epoch": 2, "batches": 1}


def test_empty_loader_raises() -> None:
    trainer = make_trainer(make_model(), DataLoader(ToyDataset(num_samples=0), batch_size=BATCH))
    with pytest.raises(RuntimeError, match="no batch"):
        trainer.train(0, 1)


def test_non_finite_loss_stops_before_the_update() -> None:
    model = make_model()
    dataset = ToyDataset()
    dataset.alphas[:] = float("nan")
    trainer = make_trainer(model, make_loader(dataset))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="iteration 0"):
        trainer.train(0, 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_trainer_logs_losses_and_token_ratios() -> None:
    trainer = make_trainer(make_model())
    trainer.train(0, 2)
    latest = trainer.storage.latest()
    ratio_names = [f"token_ratio/block{i}" for i in ROUTED_BLOCKS]  # backbone block indexes
    for name in [
        "loss_l1",
        "loss_mse",
        "total_loss",
        "data_time",
        "rank_data_time",
        "token_ratio/mean",
        *ratio_names,
    ]:
        assert latest[name][1] == 1, name
    mean_ratio = sum(latest[name][0] for name in ratio_names) / NUM_ROUTERS
    assert latest["token_ratio/mean"][0] == pytest.approx(mean_ratio)
    total = latest["loss_l1"][0] + latest["loss_mse"][0]
    assert latest["total_loss"][0] == pytest.approx(total)
    assert trainer.last_outputs["phas"].shape == (BATCH, 1, IMG, IMG)
    assert not trainer.last_outputs["phas"].requires_grad


class RecordingHook(HookBase):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def before_train(self) -> None:
        self.log.append(f"{self.name}.before_train")

    def before_step(self) -> None:
        self.log.append(f"{self.name}.before_step{self.trainer.iter}")

    def after_step(self) -> None:
        self.log.append(f"{self.name}.after_step{self.trainer.iter}")

    def after_train(self) -> None:
        self.log.append(f"{self.name}.after_train{self.trainer.iter}")


def test_hooks_fire_in_order() -> None:
    log: list[str] = []
    trainer = make_trainer(make_model())
    trainer.register_hooks([RecordingHook("a", log), None, RecordingHook("b", log)])
    trainer.train(3, 5)
    assert log == [
        "a.before_train",
        "b.before_train",
        "a.before_step3",
        "b.before_step3",
        "a.after_step3",
        "b.after_step3",
        "a.before_step4",
        "b.before_step4",
        "a.after_step4",
        "b.after_step4",
        "a.after_train5",
        "b.after_train5",
    ]


# ---------------------------------------------------------------- events and writers


def test_event_storage_smoothing_and_context() -> None:
    with pytest.raises(RuntimeError):
        get_event_storage()
    with EventStorage(start_iter=5) as storage:
        assert get_event_storage() is storage
        for value in (1.0, 100.0, 2.0):
            storage.put_scalar("loss", value)
            storage.put_scalar("lr", value, smoothing_hint=False)
            storage.iter += 1
        smoothed = storage.latest_with_smoothing_hint(window=3)
        assert smoothed["loss"] == (2.0, 7)  # median of 1, 100, 2
        assert smoothed["lr"] == (2.0, 7)
        with pytest.raises(ValueError, match="smoothing_hint"):
            storage.put_scalar("lr", 1.0)
    with pytest.raises(RuntimeError):
        get_event_storage()


def test_writers_metrics_json_tensorboard_and_checkpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    max_iter, period = 4, 2
    model = make_model()
    trainer = make_trainer(model)
    # Warmup over the first half (0.001 -> 1), then 0.1 from iteration 3.
    multiplier = WarmupParamScheduler(
        MultiStepParamScheduler([1.0, 0.1], milestones=[3], num_updates=max_iter),
        warmup_factor=WARMUP_FACTOR,
        warmup_length=2 / max_iter,
    )
    expected_lr = [LR * WARMUP_FACTOR, LR * (WARMUP_FACTOR + (1 - WARMUP_FACTOR) / 2), LR, LR * 0.1]
    evaluations = []

    def evaluate() -> dict[str, float]:
        evaluations.append(trainer.iter)
        return {"eval/sad": 1.5}

    checkpointer = Checkpointer(model, str(tmp_path), trainer=trainer)
    writers = [
        CommonMetricPrinter(max_iter),
        JSONWriter(tmp_path / "metrics.json"),
        TensorboardWriter(tmp_path),
    ]
    trainer.register_hooks(
        [
            IterationTimer(warmup_iter=1),
            LRScheduler(scheduler=multiplier),
            PeriodicCheckpointer(checkpointer, period, max_to_keep=1),
            EvalHook(period, evaluate),
            ImageLogger(period),
            PeriodicWriter(writers, period),
        ]
    )
    with caplog.at_level(logging.INFO, logger="engine"):
        trainer.train(0, max_iter)

    lr_history = [value for value, _ in trainer.storage.history("lr").values()]
    assert lr_history == pytest.approx(expected_lr, rel=1e-9)
    assert evaluations == [1, max_iter]  # at the period, then in after_train

    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    by_iter: dict[int, dict] = {}
    for line in lines:
        by_iter.setdefault(line["iteration"], {}).update(line)
    # The final evaluation is recorded at max_iter, as detectron2 records it.
    assert sorted(by_iter) == [1, 3, max_iter]
    assert by_iter[max_iter] == {"iteration": max_iter, "eval/sad": 1.5}
    assert "eval/sad" in by_iter[1] and "eval/sad" not in by_iter[3]
    for iteration in (1, 3):
        record = by_iter[iteration]
        for name in ["loss_l1", "loss_mse", "total_loss", "lr", "data_time", "time"]:
            assert name in record, (iteration, name)
        assert {f"token_ratio/block{i}" for i in ROUTED_BLOCKS} <= set(record)
        assert "token_ratio/mean" in record
        assert record["lr"] == pytest.approx(expected_lr[iteration])

    event_files = list(tmp_path.glob("events.out.tfevents.*"))
    assert event_files
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    scalar_tags = set(accumulator.Tags()["scalars"])
    assert {
        "loss_l1",
        "loss_mse",
        "total_loss",
        "lr",
        "token_ratio/mean",
        "eval/sad",
    } <= scalar_tags
    assert [event.step for event in accumulator.Scalars("total_loss")] == [1, 3]
    image_tags = set(accumulator.Tags()["images"])
    assert image_tags == {"train/image", "train/trimap", "train/alpha_gt", "train/alpha_pred"}

    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "model_0000003.pth",
        "model_final.pth",
    ]
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == max_iter - 1
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == max_iter

    printed = [r.getMessage() for r in caplog.records if r.name == "engine.events"]
    assert len(printed) == 2 and printed[-1].startswith("eta: ")
    assert "iter: 3" in printed[-1] and "total_loss" in printed[-1] and "lr: " in printed[-1]


@pytest.mark.parametrize("start_iter", [0, 10])
def test_iteration_timer_skips_warmup_as_detectron2(
    start_iter: int, caplog: pytest.LogCaptureFixture
) -> None:
    warmup, num_iter = 3, 6
    trainer = make_trainer(make_model())
    trainer.register_hooks([IterationTimer(warmup_iter=warmup)])
    with caplog.at_level(logging.INFO, logger="engine.hooks"):
        trainer.train(start_iter, start_iter + num_iter)
    timed = [iteration for _, iteration in trainer.storage.history("time").values()]
    # detectron2 times from the warmup-th iteration on: start + 2, ..., start + 5.
    assert timed == list(range(start_iter + warmup - 1, start_iter + num_iter))
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith(f"Overall training speed: {len(timed)} iterations") for m in messages)
    assert any(m.startswith("Total training time: ") for m in messages)


def test_eval_hook_rejects_non_numbers() -> None:
    trainer = make_trainer(make_model())
    trainer.register_hooks([EvalHook(0, lambda: {"eval/sad": "n/a"})])
    with pytest.raises(ValueError, match="flat dict of numbers"):
        trainer.train(0, 1)


# ---------------------------------------------------------------- lr schedule

# A short schedule of the official shape: linear warmup from 0.001, then 1 / 0.1 / 0.05.
SCHEDULE_ITERS = 100
SCHEDULE_WARMUP = 10
SCHEDULE_MILESTONES = (30, 80)
SCHEDULE_VALUES = (1.0, 0.1, 0.05)


def expected_multiplier(iteration: int) -> float:
    """The multiplier from its definition: ``0.001 + 0.999 * i / warmup`` during warmup, then
    the value of the milestone interval ``i`` falls in."""
    if iteration < SCHEDULE_WARMUP:
        return WARMUP_FACTOR + (1 - WARMUP_FACTOR) * iteration / SCHEDULE_WARMUP
    return SCHEDULE_VALUES[sum(iteration >= milestone for milestone in SCHEDULE_MILESTONES)]


def test_lr_multiplier_follows_warmup_and_steps_and_resumes() -> None:
    base_lr = 5e-4
    multiplier = WarmupParamScheduler(
        MultiStepParamScheduler(
            list(SCHEDULE_VALUES),
            milestones=list(SCHEDULE_MILESTONES),
            num_updates=SCHEDULE_ITERS,
        ),
        warmup_factor=WARMUP_FACTOR,
        warmup_length=SCHEDULE_WARMUP / SCHEDULE_ITERS,
    )
    # The torch adapter, stepped once per iteration as the LRScheduler hook does.
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": base_lr}], lr=base_lr)
    scheduler = LRMultiplier(optimizer, multiplier, SCHEDULE_ITERS)
    lrs = []
    for _ in range(SCHEDULE_ITERS):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [base_lr * expected_multiplier(i) for i in range(SCHEDULE_ITERS)]
    assert lrs == pytest.approx(expected, rel=1e-9)

    # Resuming at iteration i (last_iter = i - 1) lands on the same lr.
    resume_at = SCHEDULE_MILESTONES[0]
    resumed = LRMultiplier(optimizer, multiplier, SCHEDULE_ITERS, last_iter=resume_at - 1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lrs[resume_at], rel=1e-12)
    assert resumed.state_dict() == {"base_lrs": [base_lr], "last_epoch": resume_at}


# ---------------------------------------------------------------- optimizer groups

# Layer ids of real MEMatte-S parameter names (ViTMatte's rule, 12 blocks), written out: 0 for
# the embeddings, i + 1 inside block i (its LTRM included, its ResBottleneck not), 13 otherwise.
LAYER_IDS = {
    "backbone.pos_embed": 0,
    "backbone.patch_embed.proj.weight": 0,
    "backbone.blocks.0.norm1.weight": 1,
    "backbone.blocks.0.attn.qkv.weight": 1,
    "backbone.blocks.0.attn.rel_pos_h": 1,
    "backbone.blocks.2.efficient_block.eca.conv.weight": 3,
    "backbone.blocks.2.residual.conv1.weight": 13,
    "backbone.blocks.5.mlp.fc2.bias": 6,
    "backbone.blocks.10.attn.proj.weight": 11,
    "backbone.blocks.11.efficient_block.fc1.weight": 12,
    "backbone.blocks.11.residual.norm3.bias": 13,
    "backbone.routers.0.in_conv.0.bias": 13,
    "backbone.routers.3.out_conv.4.weight": 13,
    "decoder.matting_head.matting_convs.3.weight": 13,
    "teacher_backbone.blocks.0.norm1.weight": 13,
}


@pytest.mark.parametrize(("name", "layer_id"), LAYER_IDS.items())
def test_vit_lr_decay_rate_of_mematte_parameters(name: str, layer_id: int) -> None:
    rate = get_vit_lr_decay_rate(name, lr_decay_rate=LR_DECAY, num_layers=VIT_DEPTH)
    assert rate == pytest.approx(LR_DECAY ** (VIT_DEPTH + 1 - layer_id))


class Block(nn.Module):
    def __init__(self, dim: int, residual: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.Linear(dim, dim)
        # The model's ResBottleneck norm (timm, an nn.LayerNorm subclass) and detectron2's own
        # LayerNorm of the official model (a plain module): the official optimizer decays both.
        self.residual = nn.Sequential(TimmLayerNorm2d(dim), LayerNorm2d(dim)) if residual else None


class TinyViT(nn.Module):
    def __init__(self, dim: int = 4, depth: int = VIT_DEPTH, routed: bool = True) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 2, dim))
        self.patch_embed = nn.Conv2d(4, dim, 1)
        self.blocks = nn.ModuleList(Block(dim, residual=i % 3 == 2) for i in range(depth))
        if routed:
            self.routers = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth // 3)
            )


class NamedLikeMEMatte(nn.Module):
    """Parameter names as in the official checkpoints (backbone / teacher_backbone / decoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyViT()
        self.teacher_backbone = TinyViT(routed=False)
        self.decoder = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))


def test_param_groups_apply_lr_factors_weight_decay_and_skip_the_frozen_teacher() -> None:
    model = NamedLikeMEMatte()
    num_teacher = len(list(model.teacher_backbone.parameters()))
    assert freeze_teacher(model) == num_teacher
    base_lr, weight_decay = 5e-4, 0.1
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # Any factor function: a few distinct values, so that some groups merge and some do not.
    factors = {name: 1.0 / (1 + index % 3) for index, name in enumerate(sorted(trainable))}

    groups = get_default_optimizer_params(
        model, base_lr=base_lr, weight_decay=weight_decay, lr_factor_func=factors.__getitem__
    )
    group_of = {id(p): group for group in groups for p in group["params"]}
    assert set(group_of) == {id(p) for p in trainable.values()}  # frozen teacher excluded
    assert len(groups) < len(trainable)  # equal hyperparameters are merged
    norm_names = ("norm1.", "routers.0.0.", "routers.1.0.", "routers.2.0.", "routers.3.0.")
    norm_names += ("decoder.1.", "decoder.2.")
    for name, param in trainable.items():
        group = group_of[id(param)]
        assert group["lr"] == pytest.approx(base_lr * factors[name]), name
        is_norm = any(part in name for part in norm_names)
        no_decay = is_norm or name == "backbone.pos_embed"
        assert group["weight_decay"] == (0.0 if no_decay else weight_decay), name
    with pytest.raises(ValueError, match="base_lr"):
        get_default_optimizer_params(model, lr_factor_func=factors.__getitem__)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model()
    checkpointer = Checkpointer(model, str(tmp_path))
    checkpointer.save("model_a")
    good_bytes = (tmp_path / "model_a.pth").read_bytes()
    saved_weight = model.head.weight.detach().clone()
    real_save = torch.save

    def save_then_crash(obj: object, file: object) -> None:
        real_save(obj, file)
        file.truncate(len(good_bytes) // 2)  # half-written file, then the process dies
        raise OSError("disk full")

    monkeypatch.setattr(engine.checkpoint.torch, "save", save_then_crash)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    for name in ("model_b", "model_a"):  # a new file, and overwriting the current one
        with pytest.raises(OSError, match="disk full"):
            checkpointer.save(name)
        assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"
        assert (tmp_path / "model_a.pth").read_bytes() == good_bytes
        assert not (tmp_path / "model_b.pth").exists()
        assert not list(tmp_path.glob("*.tmp"))

    monkeypatch.undo()
    reloaded = make_model(seed=1)
    Checkpointer(reloaded, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(reloaded.head.weight, saved_weight)


def test_checkpoint_loads_bare_wrapped_and_ddp_prefixed_state_dicts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = make_model(seed=1)
    state = dict(source.state_dict())
    del state["head.bias"]
    state["teacher_backbone.extra"] = torch.zeros(1)
    ddp_state = {f"module.{key}": value for key, value in state.items()}  # saved from DDP
    payloads = [state, {"model": state, "trainer": {}}, {"model": ddp_state}]
    for index, payload in enumerate(payloads):
        path = tmp_path / f"weights{index}.pth"
        torch.save(payload, path)
        target = make_model(seed=2)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
            Checkpointer(target, str(tmp_path / "out")).resume_or_load(str(path), resume=True)
        assert torch.equal(target.head.weight, source.head.weight)
        assert not torch.equal(target.head.bias, source.head.bias)
        messages = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert "1 model keys are not in the checkpoint" in messages and "head.bias" in messages
        assert "1 checkpoint keys are not used" in messages and "teacher_backbone.extra" in messages


class InterruptError(Exception):
    pass


class InterruptAt(HookBase):
    """Stop training (as a killed run) before iteration ``iteration``."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def before_step(self) -> None:
        if self.trainer.iter == self.iteration:
            raise InterruptError


def _resumable_run(
    output_dir: Path, loader: DataLoader, *, seed: int, max_iter: int, period: int, stop: int
) -> nn.Module:
    """Train the toy with checkpoints, JSON metrics and an lr step; resume if output_dir holds a
    checkpoint; stop before iteration ``stop`` (``max_iter``: no stop)."""
    output_dir.mkdir(exist_ok=True)
    model = make_model(seed)
    trainer = make_trainer(model, loader)
    checkpointer = Checkpointer(model, str(output_dir), trainer=trainer)
    multiplier = WarmupParamScheduler(
        MultiStepParamScheduler([1.0, 0.1], milestones=[period + 1], num_updates=max_iter),
        warmup_factor=WARMUP_FACTOR,
        warmup_length=1 / max_iter,
    )
    trainer.register_hooks(
        [
            LRScheduler(scheduler=multiplier),
            PeriodicCheckpointer(checkpointer, period=period),
            InterruptAt(stop),
            PeriodicWriter([JSONWriter(output_dir / "metrics.json")], period=1),
        ]
    )
    resume = checkpointer.has_checkpoint()
    checkpointer.resume_or_load("", resume=resume)
    trainer.train(trainer.iter + 1 if resume else 0, max_iter)
    return model


def _train_sampler_loader() -> DataLoader:
    dataset = ToyDataset()
    sampler = TrainSampler(dataset, seed=1)
    return DataLoader(dataset, BATCH, sampler=sampler, generator=torch.Generator().manual_seed(0))


def _epoch_shuffle_loader() -> DataLoader:
    """A sampler without ``skip``: the resumed pass loads and drops the done batches."""
    dataset = ToyDataset()
    sampler = EpochShuffleSampler(len(dataset))
    return DataLoader(dataset, BATCH, sampler=sampler, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("make", [_train_sampler_loader, _epoch_shuffle_loader])
@pytest.mark.parametrize("stop", [BATCHES_PER_EPOCH + 1, 2 * BATCHES_PER_EPOCH])
def test_resume_inside_or_at_the_end_of_an_epoch_replays_the_run(
    tmp_path: Path, make, stop: int
) -> None:
    """Checkpoint after iteration ``stop - 1``: inside epoch 1, or at its end; the toy draws
    noise from torch's global generator, as the routers do."""
    max_iter, period = 3 * BATCHES_PER_EPOCH + 1, stop
    straight = _resumable_run(
        tmp_path / "straight", make(), seed=0, max_iter=max_iter, period=period, stop=max_iter
    )
    with pytest.raises(InterruptError):
        _resumable_run(
            tmp_path / "run", make(), seed=0, max_iter=max_iter, period=period, stop=stop + 1
        )
    assert (tmp_path / "run" / "last_checkpoint").read_text() == f"model_{stop - 1:07d}.pth"
    rows = (tmp_path / "run" / "metrics.json").read_text().splitlines()
    assert json.loads(rows[-1])["iteration"] == stop  # a row past the checkpoint, to be dropped

    loader = make()
    resumed = _resumable_run(
        tmp_path / "run", loader, seed=123, max_iter=max_iter, period=period, stop=max_iter
    )
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    iterations = [
        json.loads(line)["iteration"]
        for line in (tmp_path / "run" / "metrics.json").read_text().splitlines()
    ]
    assert iterations == list(range(max_iter))  # each iteration once
    if isinstance(loader.sampler, TrainSampler):  # skipped samples are never loaded
        done = (stop % BATCHES_PER_EPOCH) * BATCH
        assert len(loader.dataset.loaded) == (max_iter - stop) * BATCH
        assert loader.dataset.loaded[0] == SampleKey(
            stop // BATCHES_PER_EPOCH, loader.dataset.loaded[0].index
        )
        assert done == 0 or loader.dataset.loaded[0].epoch == 1


def test_loading_restores_the_generators_of_the_same_world_size_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = make_trainer(make_model()).state_dict()
    saved = state["rng_states"][0]["torch"]
    other = make_trainer(make_model(seed=1))  # reseeds torch's generator
    other.load_state_dict(state)
    assert torch.equal(torch.get_rng_state(), saved)

    state["rng_states"] = state["rng_states"] * 2  # as saved by two ranks
    other = make_trainer(make_model(seed=1))
    current = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="engine.train_loop"):
        other.load_state_dict(state)
    assert "random generator states of 2 ranks, this run has 1" in caplog.text
    assert torch.equal(torch.get_rng_state(), current)


def test_writers_start_drops_what_a_resumed_run_redoes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.json"
    rows = [json.dumps({"iteration": i, "loss": float(i)}) for i in range(6)]
    path.write_text("\n".join(rows) + '\n{"iteration": 6, "lo')  # cut short by a kill
    writer = JSONWriter(path)
    writer.start(4)
    writer.close()
    assert path.read_text().splitlines() == rows[:4]
    created = {}
    monkeypatch.setattr(
        engine.events, "SummaryWriter", lambda **kwargs: created.update(kwargs) or object()
    )
    TensorboardWriter(tmp_path).start(4)
    assert created["purge_step"] == 4  # TensorBoard hides the earlier run's events from 4 on
    TensorboardWriter(tmp_path).start(0)
    assert created["purge_step"] is None


@pytest.mark.parametrize("max_iter", [1, 2, 3, 6, 7, 200, 333, 499, 500, 501, 1000, 40406])
@pytest.mark.parametrize(
    "config", ["configs/tiny/MEMatte_tiny_synthetic.py", "configs/ViTMatte_S_Com.py"]
)
def test_lr_steps_are_written_as_iterations_of_the_run_with_the_same_lr(config, max_iter):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config), [f"train.max_iter={max_iter}"])
    before = instantiate(cfg.lr_multiplier)
    schedule_in_iterations(cfg)
    after = instantiate(cfg.lr_multiplier)
    assert [after(i / max_iter) for i in range(max_iter)] == [
        before(i / max_iter) for i in range(max_iter)
    ]
    steps = cfg.lr_multiplier.scheduler
    assert steps.num_updates == max_iter
    # The steps as the run has them (the warmup aside): each milestone is the iteration where a
    # new value starts; a value no iteration reaches is left out.
    configured = instantiate(LazyConfig.load(config).lr_multiplier.scheduler)
    factors = [configured(i / max_iter) for i in range(max_iter)]
    assert list(steps["values"]) == [factors[0]] + [factors[m] for m in steps.milestones]
    starts = [i for i in range(1, max_iter) if factors[i] != factors[i - 1]]
    assert list(steps.milestones) == starts


def test_the_issue_schedule_steps_at_120_and_180_of_200():
    cfg = LazyConfig.load("configs/tiny/MEMatte_tiny_synthetic.py")
    cfg = LazyConfig.apply_overrides(cfg, ["train.max_iter=200"])
    schedule_in_iterations(cfg)
    steps = cfg.lr_multiplier.scheduler
    assert (list(steps.milestones), steps.num_updates) == ([120, 180], 200)
    assert list(steps["values"]) == [1.0, 0.1, 0.05]
    again = copy.deepcopy(cfg)
    schedule_in_iterations(again)  # a saved config is in iterations already: unchanged
    assert again.lr_multiplier == cfg.lr_multiplier


def test_a_schedule_whose_steps_are_not_iterations_is_kept():
    """With rescale_interval the steps run over the post-warmup progress: not rewritten."""
    cfg = LazyConfig.load("configs/tiny/MEMatte_tiny_synthetic.py")
    cfg = LazyConfig.apply_overrides(
        cfg, ["train.max_iter=200", "lr_multiplier.rescale_interval=True"]
    )
    configured = copy.deepcopy(cfg.lr_multiplier)
    schedule_in_iterations(cfg)
    assert cfg.lr_multiplier == configured
