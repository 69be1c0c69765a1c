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
from ..common.scheduler import lr_multiplier
from ..common.train import train

TINY_DIM, TINY_HEADS, TINY_DEPTH = 48, 2, 4
TINY_CROP = 128  # px, training crop and the size that sizes the rel-pos tables
WINDOW_BLOCKS = [0, 2]  # blocks 1 and 3 are global (and routed)
RESIDUAL_BLOCKS = [1, 3]

for vit in (model.backbone, model.teacher_backbone):
    vit.embed_dim = TINY_DIM
    vit.num_heads = TINY_HEADS
    vit.depth = TINY_DEPTH
    vit.img_size = TINY_CROP
    vit.window_size = 4
    vit.window_block_indexes = WINDOW_BLOCKS
    vit.residual_block_indexes = RESIDUAL_BLOCKS
model.backbone.topk = 0.25
model.decoder.in_chans = TINY_DIM
model.decoder.convstream_out = [16, 32, 64]
model.decoder.fusion_out = [64, 32, 16, 16]
# No trained tiny ViTMatte exists to serve as teacher: distilling towards a random one would only
# pull the student towards noise. The (frozen, unused) teacher stays in the model so checkpoints
# keep the official layout and `model.distill=True` exercises distillation on CPU.
model.distill = False

# Schedule: the official shape (warmup, then 0.1x and 0.05x steps) scaled to a few CPU minutes.
MAX_ITER = 500
WARMUP_ITERS = 25  # 5% of training (the official 250 iterations would be half of it)
LR_STEPS = (0.6, 0.9)  # fractions of training after which the lr steps down
train.max_iter = MAX_ITER
lr_multiplier.scheduler.milestones = [int(MAX_ITER * f) for f in LR_STEPS]  # 300, 450
lr_multiplier.scheduler.num_updates = MAX_ITER
lr_multiplier.warmup_length = WARMUP_ITERS / MAX_ITER
optimizer.params.lr_factor_func.num_layers = TINY_DEPTH

train.device = "cpu"
train.amp.enabled = False  # fp32; train.amp.enabled=True train.amp.precision=bf16 for bf16
train.ddp.fp16_compression = False
train.init_checkpoint = ""  # from scratch
train.output_dir = "output/tiny_synthetic"
train.checkpointer.period = 100
train.checkpointer.max_to_keep = 2
train.eval_period = 100
train.log_period = 10
train.log_image_period = 100

dataloader.train.dataset.fg_dir = "datasets/synthetic/train/fg"
dataloader.train.dataset.alpha_dir = "datasets/synthetic/train/alpha"
dataloader.train.dataset.bg_dir = "datasets/synthetic/train/bg"
dataloader.train.dataset.crop_size = TINY_CROP
dataloader.train.batch_size = 8
dataloader.train.num_workers = 2
dataloader.evaluator = L(MattingEvaluator)(data_dir="datasets/synthetic/test")
