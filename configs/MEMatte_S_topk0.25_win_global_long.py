"""MEMatte-S (ViT-S, 384-d, 6 heads): window attention in 8 blocks, routed global 2/5/8/11.

Training recipe: 2 GPUs x 16 crops, 30 DIM epochs (40406 iterations), AdamW lr 5e-4 stepped to
0.1x / 0.05x after epochs 6 / 26 (8081, 35018), checkpoints every 2 epochs (2693), initialised
from ViTMatte-S with its backbone copied into the teacher (``pretrained/preprocess.py``).
"""

from .common.dataloader import dataloader
from .common.model import model
from .common.optimizer import optimizer
from .common.scheduler import lr_multiplier, set_epoch_schedule
from .common.train import train

WINDOW_BLOCKS = [0, 1, 3, 4, 6, 7, 9, 10]  # blocks 2, 5, 8, 11 stay global (and routed)
BATCH_PER_GPU, NUM_GPUS = 16, 2

model.backbone.topk = 0.25
model.backbone.window_block_indexes = WINDOW_BLOCKS

dataloader.train.batch_size = BATCH_PER_GPU
set_epoch_schedule(
    train,
    lr_multiplier,
    batch_per_gpu=BATCH_PER_GPU,
    num_gpus=NUM_GPUS,
    epochs=30,
    lr_step_epochs=(6, 26),
    checkpoint_epochs=2,
)
train.init_checkpoint = "./pretrained/ViTMatte_S_Com_with_teacher.pth"
train.output_dir = "./output_of_train/MEMatte_S_topk0.25_win_global_long"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
