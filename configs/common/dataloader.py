"""Training data: DIM foregrounds composited over COCO backgrounds, 512 px crops.

Paths are relative to the working directory (see the README's data preparation) and are usually
overridden on the command line, e.g. ``dataloader.train.dataset.bg_dir=/data/coco/train2014``.
``dataloader.evaluator`` is None as in the official recipe (no evaluation during training); set
it to a ``MattingEvaluator`` node to evaluate every ``train.eval_period`` iterations.

Holds the MEMatte-S recipe: 16 crops per GPU, 2 loading workers per GPU.
"""

from omegaconf import OmegaConf

from data.build import build_train_loader
from data.dim_dataset import DIMTrainDataset
from engine.config import LazyCall as L

dataloader = OmegaConf.create()
dataloader.train = L(build_train_loader)(
    dataset=L(DIMTrainDataset)(
        fg_dir="datasets/Adobe-train/fg",
        alpha_dir="datasets/Adobe-train/alpha",
        bg_dir="datasets/coco/train2014",
        crop_size=512,
        seed="${train.seed}",
    ),
    batch_size=16,  # per GPU
    num_workers=2,  # per GPU
    seed="${train.seed}",
)
dataloader.evaluator = None
