"""Evaluation of a model on a test-set folder with the official matting metrics.

Used by the periodic evaluation hook during training and by ``main.py --eval-only``. Alphas are
quantized to 8 bits exactly as ``inference.py`` writes them, so the numbers equal running
``inference.py`` then ``tools/evaluate.py``; they are logged in the table
``tools/evaluate.py`` prints (:func:`evaluation.folders.format_table`: paper units, each
column's scaling in its header).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from torch import nn

from data.eval_dataset import MattingEvalDataset
from data.image_io import BadSampleError
from evaluation.folders import format_table
from evaluation.metrics import METRIC_NAMES, Region, compute_metrics
from predictor.matting import MattingPredictor
from predictor.outputs import alpha_to_uint8

__all__ = ["MattingEvaluator"]

logger = logging.getLogger(__name__)


class MattingEvaluator:
    """Mean SAD / MSE / Grad / Conn (paper units) of a model over a test-set folder.

    Args:
        data_dir: test-set folder with ground-truth alphas (see ``data.readers``).
        layout: layout name; ``None`` detects it.
        patch_decoder: decode in 512 px tiles, as inference does.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        region: ``unknown`` (trimap == 128) or ``all`` (whole image).
        max_images: evaluate only the first N items (quick checks during training).
        prefix: prefix of the returned metric names.
        snap_trimap: move trimap values other than 0, 128 and 255 (JPEG trimaps) to the nearest
            of them instead of skipping the item (as ``inference.py --snap-trimap``).
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        layout: str | None = None,
        patch_decoder: bool = True,
        precision: str = "fp32",
        region: Region = "unknown",
        max_images: int | None = None,
        prefix: str = "eval/",
        snap_trimap: bool = False,
    ) -> None:
        self.dataset = MattingEvalDataset(data_dir, layout=layout, snap_trimap=snap_trimap)
        if max_images is not None:
            self.dataset.items = self.dataset.items[:max_images]
        missing = [item.image_path for item in self.dataset.items if item.alpha_path is None]
        if missing:
            raise ValueError(f"{data_dir}: no ground-truth alpha for {missing[0]} and others")
        self.patch_decoder = patch_decoder
        self.precision = precision
        self.region = region
        self.prefix = prefix

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """Evaluate ``model`` (DDP-wrapped or not); restores its train/eval mode afterwards."""
        model = getattr(model, "module", model)
        was_training = model.training
        predictor = MattingPredictor(
            model,
            device=next(model.parameters()).device,
            precision=self.precision,
            patch_decoder=self.patch_decoder,
        )
        per_image = []
        try:
            for idx in range(len(self.dataset)):
                try:
                    sample = self.dataset[idx]
                except BadSampleError as exc:
                    logger.error("evaluation skips %s: %s", exc.path, exc.reason)
                    continue
                prediction = predictor.predict_levels(sample["image"][None], sample["trimap"][None])
                pred = alpha_to_uint8(prediction.alpha[0])
                gt, trimap = sample["alpha"][0].numpy(), sample["trimap"][0].numpy()
                per_image.append(compute_metrics(pred, gt, trimap, self.region))
        finally:
            model.train(was_training)
        if not per_image:
            raise RuntimeError("evaluation produced no result: every test item failed")
        means = {}
        for name in METRIC_NAMES:
            values = [m[name] for m in per_image if not math.isnan(m[name])]
            means[name] = sum(values) / len(values) if values else math.nan
        # The table of tools/evaluate.py: the same numbers, the same units.
        logger.info("%s", format_table(means, len(per_image), self.region))
        return {self.prefix + name: value for name, value in means.items()}
