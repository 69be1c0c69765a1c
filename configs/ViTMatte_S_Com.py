"""ViTMatte-S (ViT-S, 384-d, 6 heads): MEMatte-S with routing off, i.e. MEMatte's teacher alone.

Routing off gives the ViTMatte backbone: relative position in every block (window and global), no
routers, no LTRMs; the decoder is the same. The official ``ViTMatte_S_Com.pth`` loads without
missing or unexpected keys. There is no distillation teacher.

Training recipe of the ViTMatte repository (``configs/ViTMatte_S_100ep.py``): 2 GPUs x 16 crops,
100 DIM epochs (134687 iterations), lr 5e-4 stepped to 0.1x / 0.05x after epochs 30 / 90 (40406,
121218), checkpoints every 10 epochs (13468), initialised from DINO ViT-S/16 with a 4-channel
patch embedding (``dino_vit_s_fna.pth`` of the ViTMatte repository).
"""

from engine.config import LazyConfig

from .common.scheduler import set_epoch_schedule

dataloader, lr_multiplier, model, optimizer, train = LazyConfig.load_rel(
    "MEMatte_S_topk0.25_win_global_long.py",
    ("dataloader", "lr_multiplier", "model", "optimizer", "train"),
)
BATCH_PER_GPU, NUM_GPUS = 16, 2

model.backbone.use_routing = False  # rel-pos in every block; no routers, no LTRMs
model.teacher_backbone = None
model.distill = False

dataloader.train.batch_size = BATCH_PER_GPU
set_epoch_schedule(
    train,
    lr_multiplier,
    batch_per_gpu=BATCH_PER_GPU,
    num_gpus=NUM_GPUS,
    epochs=100,
    lr_step_epochs=(30, 90),
    checkpoint_epochs=10,
)
train.init_checkpoint = "./pretrained/dino_vit_s_fna.pth"
train.output_dir = "./output_of_train/ViTMatte_S_100ep"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
