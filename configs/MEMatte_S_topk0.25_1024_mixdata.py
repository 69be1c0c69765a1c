"""MEMatte-S on mixed data, for real-world images: the authors' AIM-500 model.

The official README's "robust model for real-world images" (AIM-500 SAD 13.90). Foregrounds and
alphas pooled from the Composition-1k (431), Distinctions-646 (596) and AM-2K (1800) training sets:
2827 foregrounds x 100 backgrounds = 282700 samples per epoch. 1024 px crops (``img_size`` 1024
for student and teacher), 4 GPUs x 2 crops, 10 epochs (353375 iterations), lr 5e-4 stepped to
0.1x / 0.05x after epochs 3 / 9 (106012, 318037), 250 warmup iterations, checkpoints every half
epoch (17668), distillation on, initialised from ViTMatte-S trained on the same mixed data at
1024 px with its backbone copied into the teacher (``pretrained/preprocess.py``).
"""

from engine.config import LazyConfig

from .common.scheduler import set_epoch_schedule

dataloader, lr_multiplier, model, optimizer, train = LazyConfig.load_rel(
    "MEMatte_S_topk0.25_win_global_long.py",
    ("dataloader", "lr_multiplier", "model", "optimizer", "train"),
)
# Training foregrounds of Composition-1k + Distinctions-646 + AM-2K, 100 backgrounds each.
MIXED_TRAIN_SAMPLES = (431 + 596 + 1800) * 100  # 282700
BATCH_PER_GPU, NUM_GPUS = 2, 4

model.backbone.img_size = 1024  # px: the training crop and the global rel-pos tables; teacher too

# Pairwise folder lists (alpha folder i holds the mattes of foreground folder i), pooled.
dataloader.train.dataset.fg_dir = [
    "datasets/Adobe-train/fg",
    "datasets/Distinctions-646/Train/FG",
    "datasets/AM-2K/train/original",
]
dataloader.train.dataset.alpha_dir = [
    "datasets/Adobe-train/alpha",
    "datasets/Distinctions-646/Train/GT",
    "datasets/AM-2K/train/mask",
]
dataloader.train.batch_size = BATCH_PER_GPU
set_epoch_schedule(
    train,
    lr_multiplier,
    batch_per_gpu=BATCH_PER_GPU,
    num_gpus=NUM_GPUS,
    epochs=10,
    lr_step_epochs=(3, 9),
    checkpoint_epochs=0.5,
    samples_per_epoch=MIXED_TRAIN_SAMPLES,
)
train.init_checkpoint = "./pretrained/ViTMatte_S_mixdata_1024_with_teacher.pth"
train.output_dir = "./output_of_train/MEMatte_S_topk0.25_1024_mixdata"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
