"""Inference building blocks shared by ``inference.py`` and the training-time evaluator.

Building the inference model (no teacher), loading official or trainer checkpoints, predicting
alpha for a batch, and turning alpha into the 8-bit PNG values the official script writes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from engine.checkpoint import CheckpointError, clean_state_dict, load_checkpoint
from engine.config import LazyConfig, instantiate
from utils.device import autocast

__all__ = [
    "alpha_to_uint8",
    "build_inference_model",
    "load_inference_weights",
    "predict",
]

logger = logging.getLogger(__name__)

UINT8_MAX = 255
# Keys listed in an error message before the rest is elided.
_MAX_LISTED_KEYS = 8


def build_inference_model(config_file: str | Path, overrides: Sequence[str] = ()) -> nn.Module:
    """Instantiate ``cfg.model`` from a LazyConfig file without the distillation teacher."""
    cfg = LazyConfig.load(str(config_file))
    cfg = LazyConfig.apply_overrides(cfg, [*overrides, "model.teacher_backbone=None"])
    return instantiate(cfg.model)


def load_inference_weights(model: nn.Module, path: str | Path, *, trusted: bool = False) -> None:
    """Load an official (``{"model": ...}`` or bare) or trainer checkpoint for inference.

    ``teacher_backbone.*`` and a DDP ``module.`` prefix are dropped. Every model weight must be
    present; unexpected keys are logged.

    Args:
        model: the inference model (no teacher).
        path: the checkpoint file, read by :func:`engine.checkpoint.load_checkpoint`.
        trusted: also load a file that pickles objects other than tensors.

    Raises:
        FileNotFoundError, ValueError: unreadable or untrusted file, or weights missing for the
            model.
    """
    path = Path(path)
    state = clean_state_dict(load_checkpoint(path, trusted=trusted)["model"], drop_teacher=True)
    if not all(isinstance(value, Tensor) for value in state.values()):
        raise CheckpointError(f"{path}: the model state dict holds values that are not tensors")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: another model size
        raise ValueError(f"{path} does not fit the configured model: {exc}") from exc
    if result.missing_keys:
        listed = ", ".join(result.missing_keys[:_MAX_LISTED_KEYS])
        raise ValueError(
            f"{path} lacks {len(result.missing_keys)} weights of the configured model "
            f"(wrong config?): {listed}"
        )
    if result.unexpected_keys:
        logger.warning(
            "%s: %d unused keys: %s",
            path,
            len(result.unexpected_keys),
            ", ".join(result.unexpected_keys[:_MAX_LISTED_KEYS]),
        )


def predict(
    model: nn.Module,
    batch: dict[str, Tensor],
    *,
    device: torch.device,
    precision: str = "fp32",
    patch_decoder: bool = True,
) -> dict:
    """Alpha and routing for one batch of same-sized images.

    Args:
        model: MEMatte in ``eval()`` mode on ``device``.
        batch: ``image`` [B, 3, H, W] in 0..1 and ``trimap`` [B, 1, H, W] in 0..1.
        device: where to run.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast).
        patch_decoder: decode in 512 px tiles (bounded memory on large images).

    Returns:
        the model outputs with ``phas`` as float32 [B, 1, H, W] on the CPU.
    """
    inputs = {k: batch[k].to(device, non_blocking=True) for k in ("image", "trimap")}
    with torch.inference_mode(), autocast(device, precision):
        out = model(inputs, patch_decoder=patch_decoder)
    out["phas"] = out["phas"].float().cpu()
    return out


def alpha_to_uint8(phas: Tensor, trimap: Tensor, rounding: bool = False) -> np.ndarray:
    """8-bit alpha as the official script writes it.

    Known trimap regions are forced to 0 (trimap 0) and 255 (trimap 1); the rest is
    ``floor(alpha * 255)`` (``torchvision``'s float-to-PIL conversion truncates), or rounded.

    Args:
        phas: ``[H, W]`` alpha in [0, 1].
        trimap: ``[H, W]`` trimap as fed to the model (file value / 255).
        rounding: round to the nearest level instead of truncating.

    Returns:
        ``[H, W]`` uint8 array.
    """
    alpha = phas.float().clone()
    alpha[trimap == 0] = 0.0
    alpha[trimap == 1] = 1.0
    scaled = alpha.clamp(0, 1) * UINT8_MAX
    if rounding:
        scaled = scaled.round()
    return scaled.to(torch.uint8).numpy()
