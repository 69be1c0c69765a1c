"""Matting inference from Python: :class:`MattingPredictor` (an image and a trimap, a mask, or a
box and clicks for a segmenter in, alpha out), on the official protocol.

The alpha comes back with the official known-region clamp (0 where the trimap is 0, 1 where it
is 255), so ``floor(alpha * 255)`` is the PNG the official script writes
(:func:`predictor.outputs.alpha_to_uint8`). Inputs are read by :mod:`predictor.inputs`.

References: detectron2 ``DefaultPredictor`` (the idea); MEMatte ``inference.py`` (the protocol).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from modeling.backbone.router import GLOBAL_ROUTE
from predictor.prediction import AUTO, BatchPrediction, ImagePredictor, RoutingMaps
from predictor.segmenter import Segmenter, as_segmenter
from predictor.token_budget import auto_max_number_token
from predictor.weights import build_inference_model, load_inference_weights
from utils.device import autocast, resolve_device, to_unit_float
from utils.memory import bound_onednn_primitive_cache

__all__ = [
    "AUTO",
    "BatchPrediction",
    "ImagePredictor",
    "MattingPredictor",
    "RoutingMaps",
    "check_predictor_options",
]

logger = logging.getLogger(__name__)


def _as_tensor(levels: np.ndarray | Tensor) -> Tensor:
    """Levels as a tensor, sharing an array's memory, also when the array is read-only (as arrays
    of PIL images are): the predictor never writes to its inputs, so a copy (72 MiB for a 6K
    photo) is not needed and torch's warning about non-writable arrays does not apply."""
    if isinstance(levels, Tensor):
        return levels
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(levels)


def check_predictor_options(
    device: str | torch.device, precision: str, max_number_token: int | str | None
) -> torch.device:
    """Check the options of a :class:`MattingPredictor` without a model (``inference.py``
    checks them before it decides which items are done already).

    Returns:
        The device the predictor runs on (``"auto"`` resolved).

    Raises:
        ValueError: a CUDA device without CUDA, an unknown precision or fp16 on a CPU, or a
            ``max_number_token`` that is not an int >= 0, ``"auto"`` or None.
    """
    resolved = resolve_device(device)
    autocast(resolved, precision)  # validates the precision for the device
    if not (max_number_token is None or max_number_token == AUTO):
        if isinstance(max_number_token, bool) or not isinstance(max_number_token, int):
            raise ValueError(
                f"max_number_token must be an int, 'auto' or None, not {max_number_token!r}"
            )
        if max_number_token < 0:
            raise ValueError(f"max_number_token must be >= 0, got {max_number_token}")
    return resolved


class MattingPredictor(ImagePredictor):
    """Alpha mattes from an image and a trimap (or a mask), with the official protocol.

    ``predictor(image, trimap)`` returns ``[H, W]`` float32 alpha in [0, 1] with the known
    regions forced as the official script does, so ``floor(alpha * 255)`` is exactly the PNG
    ``inference.py`` writes. The model runs in eval mode without autograd, so the configs'
    memory-lean inference path (``modeling/lean``) is the one used.

    Args:
        model: a MEMatte (no teacher needed).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only) autocast.
        max_number_token: cap on the tokens in one global attention per image: None keeps the
            model's (18500 in the configs, as official), an int sets it, ``"auto"`` picks for
            each image size the largest cap that fits the device's free memory
            (:func:`predictor.token_budget.auto_max_number_token`; the cap chosen is logged).
        patch_decoder: decode in the official 512 px tiles (False: the whole image at once, which
            can change results slightly at tile borders).
        segmenter: for ``box=`` / ``points=`` calls: a :class:`~predictor.segmenter.Segmenter`,
            or a SAM, SAM-HQ or SAM 2 checkpoint (hub id or ``save_pretrained`` folder) loaded
            onto ``device`` (see :func:`~predictor.segmenter.load_segmenter`).

    Raises:
        ValueError: an unknown precision, fp16 on a CPU, a CUDA device without CUDA, a bad
            ``max_number_token``, or a segmenter that cannot be loaded.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = AUTO,
        precision: str = "fp32",
        max_number_token: int | str | None = None,
        patch_decoder: bool = True,
        segmenter: Segmenter | str | Path | None = None,
    ) -> None:
        self.device = check_predictor_options(device, precision, max_number_token)
        bound_onednn_primitive_cache()
        if not (max_number_token is None or max_number_token == AUTO):
            model.backbone.max_number_token = max_number_token
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.auto_cap = max_number_token == AUTO
        self.patch_decoder = patch_decoder
        self._auto_caps: dict[tuple[int, int], int | None] = {}
        self.segmenter = as_segmenter(segmenter, self.device)

    @classmethod
    def from_config(
        cls,
        config_file: str | Path,
        checkpoint: str | Path | None = None,
        *,
        device: str | torch.device = AUTO,
        precision: str = "fp32",
        max_number_token: int | str | None = None,
        patch_decoder: bool = True,
        overrides: Sequence[str] = (),
        trust_checkpoint: bool = False,
        segmenter: Segmenter | str | Path | None = None,
    ) -> MattingPredictor:
        """Build the model of a LazyConfig file (without the teacher) and load its weights.

        Args:
            config_file: a config, e.g. ``configs/MEMatte_S_topk0.25_win_global_long.py``
                (configs are code: only from a trusted source).
            checkpoint: official or trainer checkpoint; None keeps random weights (with a
                warning).
            device, precision, max_number_token, patch_decoder, segmenter: see the class.
            overrides: config overrides ``key=value``.
            trust_checkpoint: also load a checkpoint that pickles objects other than tensors
                (runs code stored in the file).

        Raises:
            FileNotFoundError, ValueError: a missing config or checkpoint, an unreadable or
                untrusted checkpoint, or weights that do not fit the config.
        """
        model = build_inference_model(config_file, overrides)
        if checkpoint is None:
            logger.warning("no checkpoint given: %s has random weights", config_file)
        else:
            load_inference_weights(model, checkpoint, trusted=trust_checkpoint)
        return cls(
            model,
            device=device,
            precision=precision,
            max_number_token=max_number_token,
            patch_decoder=patch_decoder,
            segmenter=segmenter,
        )

    def _set_auto_cap(self, hw: tuple[int, int]) -> None:
        """``max_number_token="auto"``: the cap for images of size ``hw``, logged once."""
        if hw not in self._auto_caps:
            cap = auto_max_number_token(self.model, hw, self.device)
            self._auto_caps[hw] = cap
            chosen = "no cap (every token fits)" if cap is None else f"cap {cap} tokens"
            logger.info("max_number_token auto for %dx%d (HxW) images: %s", *hw, chosen)
        self.model.backbone.max_number_token = self._auto_caps[hw]

    def predict_levels(
        self, image: np.ndarray | Tensor, trimap: np.ndarray | Tensor
    ) -> BatchPrediction:
        """Alpha and routing of a batch of same-sized images.

        Args:
            image: ``[B, 3, H, W]`` RGB array or tensor: uint8 or uint16 levels, or float in
                [0, 1].
            trimap: ``[B, 1, H, W]`` uint8 levels (fed as value / 255).

        Returns:
            the :class:`BatchPrediction`; each image's result equals its batch-1 result.
        """
        image, trimap = _as_tensor(image), _as_tensor(trimap)
        if self.auto_cap:
            self._set_auto_cap(tuple(image.shape[-2:]))
        # uint8 levels go to the model as they are: it converts them crop by crop (value / 255),
        # so a 6K image never exists as floats; other depths are converted here.
        inputs = {
            key: levels.to(self.device, non_blocking=True)
            if levels.dtype == torch.uint8
            else to_unit_float(levels, self.device)
            for key, levels in (("image", image), ("trimap", trimap))
        }
        with torch.inference_mode():
            with autocast(self.device, self.precision):
                # The official clamp of the known regions, done by the model, which then skips
                # the decoder work that the clamp overwrites.
                out = self.model(inputs, patch_decoder=self.patch_decoder, clamp_known=True)
            del inputs
            alpha = out["phas"][:, 0].float()
        return BatchPrediction(
            alpha=alpha.cpu().numpy(),
            keep=[keep[..., 0].float().cpu().numpy() for keep in out["keep"]],
            # router log-probabilities [B, h, w, 2] -> p(global) [B, h, w]
            probability=[
                s[..., GLOBAL_ROUTE].float().exp().cpu().numpy() for s in out["router_scores"]
            ],
            block_indexes=tuple(self.model.backbone.routed_block_indexes),
        )
