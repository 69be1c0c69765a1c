"""Tiny MEMatte for CPU: trains in minutes on the synthetic dataset; demonstrates the pipeline.

48-d, 4 blocks, 2 heads, 4x4-token windows in blocks 0 and 2 (blocks 1 and 3 global and routed),
a slimmer detail-capture decoder, 128 px training crops. Its weights take about 1.4 MB.

Data: ``python tools/make_synthetic_dataset.py --out datasets/synthetic --seed 0``. Training:
``OMP_NUM_THREADS=1 python main.py --config-file configs/tiny/MEMatte_tiny_synthetic.py`` (one
CPU process, about 5 minutes on 2 busy cores; add ``--num-gpus 2`` for two gloo processes).
"""

from engine.config import LazyCall as L
from evaluation.evaluator import MattingEvaluator

from ..common.dataloader import dataloader
from ..common.model import model
from ..common.optimizer import optimizer
from ..common.scheduler import lr_multiplier, set_schedule
from ..common.train import train

model.backbone.embed_dim = 48
model.backbone.num_heads = 2
model.backbone.depth = 4
model.backbone.img_size = 128  # px, the training crop (sizes the rel-pos tables)
model.backbone.window_size = 4
model.backbone.window_block_indexes = [0, 2]  # blocks 1 and 3 are global (and routed)
model.backbone.residual_block_indexes = [1, 3]
model.backbone.topk = 0.25
model.decoder.convstream_out = [16, 32, 64]
model.decoder.fusion_out = [64, 32, 16, 16]
# No trained tiny ViTMatte exists to serve as teacher: distilling towards a random one would only
# pull the student towards noise. The (frozen, unused) teacher stays in the model so checkpoints
# keep the official layout and `model.distill=True` exercises distillation on CPU.
model.distill = False

# The official shape (warmup, then 0.1x and 0.05x steps) scaled to a few CPU minutes: warmup is
# 5% of training (the official 250 iterations would be half of it), steps after 60% and 90%.
MAX_ITER = 500
set_schedule(
    train,
    lr_multiplier,
    max_iter=MAX_ITER,
    milestones=[int(MAX_ITER * 0.6), int(MAX_ITER * 0.9)],  # 300, 450
    checkpoint_period=100,
    warmup_iters=25,
)

train.device = "cpu"
train.amp.enabled = False  # fp32; train.amp.enabled=True train.amp.precision=bf16 for bf16
train.ddp.fp16_compression = False
train.init_checkpoint = ""  # from scratch
train.output_dir = "output/tiny_synthetic"
train.checkpointer.max_to_keep = 2
train.eval_period = 100
train.log_period = 10
train.log_image_period = 100

dataloader.train.dataset.fg_dir = "datasets/synthetic/train/fg"
dataloader.train.dataset.alpha_dir = "datasets/synthetic/train/alpha"
dataloader.train.dataset.bg_dir = "datasets/synthetic/train/bg"
dataloader.train.batch_size = 8
dataloader.train.num_workers = 2
dataloader.evaluator = L(MattingEvaluator)(data_dir="datasets/synthetic/test")

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
