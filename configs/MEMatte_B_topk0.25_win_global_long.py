"""MEMatte-B (ViT-B, 768-d, 12 heads): MEMatte-S with the ViT-B width and the B recipe.

Training recipe: 4 GPUs x 10 crops, 60 DIM epochs (64650 iterations), lr stepped to 0.1x / 0.05x
after epochs 30 / 52 (32325, 56030), checkpoints every 4 epochs (4310), 4 loading workers per GPU.
"""

from engine.config import LazyConfig

from .common.scheduler import set_epoch_schedule

dataloader, lr_multiplier, model, optimizer, train = LazyConfig.load_rel(
    "MEMatte_S_topk0.25_win_global_long.py",
    ("dataloader", "lr_multiplier", "model", "optimizer", "train"),
)
BATCH_PER_GPU, NUM_GPUS = 10, 4

model.backbone.embed_dim = 768  # the teacher and the decoder follow
model.backbone.num_heads = 12

dataloader.train.batch_size = BATCH_PER_GPU
dataloader.train.num_workers = 4  # per GPU
set_epoch_schedule(
    train,
    lr_multiplier,
    batch_per_gpu=BATCH_PER_GPU,
    num_gpus=NUM_GPUS,
    epochs=60,
    lr_step_epochs=(30, 52),
    checkpoint_epochs=4,
)
train.init_checkpoint = "./pretrained/ViTMatte_B_Com_with_teacher.pth"
# Official output folder name (it says ViTMatte although the model is MEMatte-B).
train.output_dir = "./output_of_train/ViTMatte_B_topk0.25_win_global_long"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
