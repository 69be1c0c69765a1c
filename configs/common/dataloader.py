"""Training data: DIM foregrounds composited over COCO backgrounds, 512 px crops.

Paths are relative to the working directory (see the README's data preparation) and are usually
overridden on the command line, e.g. ``dataloader.train.dataset.bg_dir=/data/coco/train2014``.
``dataloader.evaluator`` is None as in the official recipe (no evaluation during training); set
it to a ``MattingEvaluator`` node to evaluate every ``train.eval_period`` iterations.

The crop is the model's ``img_size`` (512 px); recipes set the batch size per GPU.
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
        crop_size="${model.backbone.img_size}",  # the training crop sizes the rel-pos tables
        seed="${train.seed}",
        official_order="${..official_order}",
    ),
    batch_size="???",  # per GPU, set by a recipe
    num_workers=2,  # per GPU
    seed="${train.seed}",
    # True: the official sample order (file lists, one permutation repeated every epoch) for
    # comparing runs with the official code; False: sorted files, reshuffled every epoch.
    official_order=False,
)
dataloader.evaluator = None
