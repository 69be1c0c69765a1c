"""ViTMatte-B (ViT-B, 768-d, 12 heads): ViTMatte-S with the ViT-B width and the B recipe.

Loads the official ``ViTMatte_B_Com.pth`` without missing or unexpected keys. Training recipe of
the ViTMatte repository (``configs/ViTMatte_B_100ep.py``): 2 GPUs x 10 crops, 100 DIM epochs
(215500 iterations), lr stepped to 0.1x / 0.05x after epochs 30 / 90 (64650, 193950), checkpoints
every 10 epochs (21550), initialised from MAE ViT-B/16 with a 4-channel patch embedding
(``mae_vit_b_fna.pth``).
"""

from engine.config import LazyConfig

from .common.scheduler import set_epoch_schedule

dataloader, lr_multiplier, model, optimizer, train = LazyConfig.load_rel(
    "ViTMatte_S_Com.py", ("dataloader", "lr_multiplier", "model", "optimizer", "train")
)
BATCH_PER_GPU, NUM_GPUS = 10, 2

model.backbone.embed_dim = 768  # the decoder follows
model.backbone.num_heads = 12

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
train.init_checkpoint = "./pretrained/mae_vit_b_fna.pth"
train.output_dir = "./output_of_train/ViTMatte_B_100ep"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
