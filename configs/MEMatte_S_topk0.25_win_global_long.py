"""MEMatte-S (ViT-S, 384-d, 6 heads): window attention in 8 blocks, routed global 2/5/8/11.

Training recipe (the common files hold it): 2 GPUs x 16 crops, 30 DIM epochs (40406 iterations),
AdamW lr 5e-4 stepped to 0.1x / 0.05x after epochs 6 / 26, checkpoints every 2 epochs,
initialised from ViTMatte-S with its backbone copied into the teacher
(``pretrained/preprocess.py``).
"""

from .common.dataloader import dataloader
from .common.model import model
from .common.optimizer import optimizer
from .common.scheduler import lr_multiplier
from .common.train import train

WINDOW_BLOCKS = [0, 1, 3, 4, 6, 7, 9, 10]  # blocks 2, 5, 8, 11 stay global (and routed)

model.backbone.use_rel_pos = True
model.backbone.topk = 0.25
model.backbone.window_block_indexes = WINDOW_BLOCKS
model.distill = True
model.teacher_backbone.window_block_indexes = WINDOW_BLOCKS

train.init_checkpoint = "./pretrained/ViTMatte_S_Com_with_teacher.pth"
train.output_dir = "./output_of_train/MEMatte_S_topk0.25_win_global_long"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
