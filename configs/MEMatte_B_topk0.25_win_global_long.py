"""MEMatte-B (ViT-B, 768-d, 12 heads): window attention in 8 blocks, routed global 2/5/8/11.

Training recipe: 4 GPUs x 10 crops, 60 DIM epochs (64650 iterations), lr stepped to 0.1x / 0.05x
after epochs 30 / 52, checkpoints every 4 epochs; the rest as MEMatte-S (common files).
"""

from .common.dataloader import dataloader
from .common.model import model
from .common.optimizer import optimizer
from .common.scheduler import WARMUP_ITERS, lr_multiplier
from .common.train import DIM_TRAIN_SAMPLES, train

WINDOW_BLOCKS = [0, 1, 3, 4, 6, 7, 9, 10]  # blocks 2, 5, 8, 11 stay global (and routed)
BATCH_PER_GPU, NUM_GPUS = 10, 4
ITERS_PER_EPOCH = DIM_TRAIN_SAMPLES / (BATCH_PER_GPU * NUM_GPUS)  # 1077.5, kept a float
EPOCHS = 60
CHECKPOINT_EPOCHS = 4
LR_STEP_EPOCHS = (30, 52)

model.backbone.embed_dim = 768
model.backbone.num_heads = 12
model.decoder.in_chans = 768
model.teacher_backbone.embed_dim = 768
model.teacher_backbone.num_heads = 12

model.backbone.use_rel_pos = True
model.backbone.topk = 0.25
model.backbone.window_block_indexes = WINDOW_BLOCKS
model.distill = True
model.teacher_backbone.window_block_indexes = WINDOW_BLOCKS

train.max_iter = int(ITERS_PER_EPOCH * EPOCHS)  # 64650
train.checkpointer.period = int(ITERS_PER_EPOCH * CHECKPOINT_EPOCHS)  # 4310
# 32325, 56030
lr_multiplier.scheduler.milestones = [int(ITERS_PER_EPOCH * e) for e in LR_STEP_EPOCHS]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = WARMUP_ITERS / train.max_iter

train.init_checkpoint = "./pretrained/ViTMatte_B_Com_with_teacher.pth"
# Official output folder name (it says ViTMatte although the model is MEMatte-B).
train.output_dir = "./output_of_train/ViTMatte_B_topk0.25_win_global_long"

dataloader.train.batch_size = BATCH_PER_GPU
dataloader.train.num_workers = 4  # per GPU

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
