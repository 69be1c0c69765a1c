"""The inference model of a config and its weights: the MEMatte (or ViTMatte) of a LazyConfig file
without its distillation teacher, and an official or trainer checkpoint loaded into it.

References: detectron2 ``DefaultPredictor`` (config + checkpoint -> model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from engine.checkpoint import CheckpointError, clean_state_dict, load_checkpoint
from engine.config import LazyConfig, instantiate

__all__ = ["build_inference_model", "load_inference_weights"]

logger = logging.getLogger(__name__)

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
